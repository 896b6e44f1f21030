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

/// The engine's content-hash id scheme (`normalize::hash_id`), recomputed to pin it: SHA-256
/// over each part's length (u64, little-endian) and bytes, the first 8 bytes in hex.
#[allow(dead_code)] // not every test file that includes this module uses it
pub fn hash_id(source: &str, parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    let d = h.finalize();
    format!("{source}:{}", hex::encode(&d[..8]))
}
