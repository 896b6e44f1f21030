//! Helpers the engine's integration tests share.

use proptest::prelude::*;

/// Time-like strings, with the years chrono reads and an event cannot carry.
pub fn time_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[+-]?[0-9]{1,7}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[T ][01][0-9]:[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?(Z|[+-](0[0-9]|1[0-4]):[0-5][0-9])?",
        "(Mon, )?[0-9]{1,2} (Jan|Feb|Dec) [0-9]{4} [0-2][0-9]:[0-5][0-9]:[0-5][0-9] (GMT|\\+1400|-1400)",
        "[0-9]{1,2}/[0-9]{1,2}/[0-9]{1,7} [0-9]{1,2}:[0-5][0-9]:[0-5][0-9] (AM|PM)",
        ".{0,24}",
    ]
}
