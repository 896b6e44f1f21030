//! The one duration grammar of Keel: policy files (`delay`, `dedup.window`), `keel test` files
//! (a step's `at`, `+15m` times) and the host's `keel.yaml` all read durations with
//! [`parse_duration`], whose documentation is the grammar's reference.

use std::time::Duration;

/// Why [`parse_duration`] rejected its input. Each message names the input (escaped with
/// [`crate::escape`], so it is safe in a diagnostic or a log line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The input is empty or only whitespace.
    #[error("a duration cannot be empty (write e.g. 90s, 1m30s, 500ms)")]
    Empty,
    /// The input starts with `-`.
    #[error("`{0}` is negative: a duration is zero or more")]
    Negative(String),
    /// The input starts with `+`, or has a unit with no number before it.
    #[error("`{0}`: expected a number, then a unit (ms, s, m, h or d)")]
    MissingNumber(String),
    /// A number with a fraction, like `1.5h`.
    #[error("`{0}`: fractions are not supported; use a smaller unit (1h30m, 1500ms)")]
    Fraction(String),
    /// A number after a unit group has no unit of its own, like `1m30`.
    #[error("`{input}`: `{number}` needs a unit (ms, s, m, h or d)")]
    MissingUnit {
        /// The whole input.
        input: String,
        /// The number without a unit.
        number: String,
    },
    /// A unit other than `ms`, `s`, `m`, `h`, `d`.
    #[error("`{input}`: unknown unit `{unit}` (use ms, s, m, h or d)")]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The unit as written.
        unit: String,
    },
    /// Units repeated or out of order, like `30s1m` or `1m1m`.
    #[error("`{0}`: units go from the largest to the smallest, each at most once (e.g. 1h30m)")]
    UnitOrder(String),
    /// More than `u64::MAX` seconds.
    #[error("`{0}` is too large")]
    Overflow(String),
}

/// The units, largest first (their index is their rank): suffix and the duration of one.
const UNITS: [(&str, Duration); 5] = [
    ("d", Duration::from_secs(86_400)),
    ("h", Duration::from_secs(3_600)),
    ("m", Duration::from_secs(60)),
    ("s", Duration::from_secs(1)),
    ("ms", Duration::from_millis(1)),
];

/// Parses a duration in Keel's one grammar, used by policy files, `keel test` files and
/// `keel.yaml`. After trimming surrounding whitespace:
///
/// * a plain integer is a number of seconds: `90`;
/// * otherwise one or more `<integer><unit>` groups with no spaces between them, units `d`
///   (days), `h` (hours), `m` (minutes), `s` (seconds), `ms` (milliseconds), from the largest
///   unit to the smallest, each at most once: `500ms`, `90s`, `15m`, `1m30s`, `2h`, `1d12h`,
///   `1s500ms`.
///
/// Not accepted: an empty string, a sign (`-5s`, `+5s`), fractions (`1.5h`: write `1h30m`),
/// a number without a unit after a group (`1m30`), other units (`us`, `w`, `min`, `M`), and
/// values beyond `u64::MAX` seconds. Zero (`0`, `0s`) is a valid duration; where a duration
/// must be positive (a policy's `delay`), the caller says so.
///
/// ```
/// use std::time::Duration;
/// use keel_engine::parse_duration;
///
/// assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
/// assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
/// assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
/// assert!(parse_duration("-5s").is_err());
/// assert!(parse_duration("").is_err());
/// ```
///
/// # Errors
///
/// A [`DurationError`] naming the input when it is empty, negative, has a fraction, an unknown
/// or missing unit, units out of order, or exceeds `u64::MAX` seconds.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    let named = || crate::escape(s);
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with('-') {
        return Err(DurationError::Negative(named()));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = s.parse().map_err(|_| DurationError::Overflow(named()))?;
        return Ok(Duration::from_secs(n));
    }
    let mut rest = s;
    let mut total = Duration::ZERO;
    // The rank (index in UNITS) of the last unit seen; the next must be larger.
    let mut last: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(DurationError::MissingNumber(named()));
        }
        let (number, tail) = rest.split_at(digits);
        if tail.starts_with('.') {
            return Err(DurationError::Fraction(named()));
        }
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit {
                input: named(),
                number: number.to_string(),
            });
        }
        let Some(rank) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(DurationError::UnknownUnit {
                input: named(),
                unit: crate::escape(unit),
            });
        };
        if last.is_some_and(|l| rank <= l) {
            return Err(DurationError::UnitOrder(named()));
        }
        last = Some(rank);
        let n: u64 = number
            .parse()
            .map_err(|_| DurationError::Overflow(named()))?;
        let part = match UNITS[rank].1.as_secs() {
            0 => Some(Duration::from_millis(n)),
            secs => n.checked_mul(secs).map(Duration::from_secs),
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| DurationError::Overflow(named()))?;
        rest = tail;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(s: &str) -> Duration {
        parse_duration(s).unwrap()
    }

    #[test]
    fn plain_integers_are_seconds() {
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("90"), Duration::from_secs(90));
        assert_eq!(ok(" 42 "), Duration::from_secs(42));
        assert_eq!(ok("18446744073709551615"), Duration::from_secs(u64::MAX));
    }

    #[test]
    fn each_unit() {
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("90s"), Duration::from_secs(90));
        assert_eq!(ok("15m"), Duration::from_secs(900));
        assert_eq!(ok("2h"), Duration::from_secs(7200));
        assert_eq!(ok("1d"), Duration::from_secs(86_400));
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("0ms"), Duration::ZERO);
    }

    #[test]
    fn compound() {
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("95h30m"), Duration::from_secs(95 * 3600 + 1800));
        assert_eq!(ok("1d2h3m4s5ms"), Duration::new(93_784, 5_000_000));
        assert_eq!(ok("1s500ms"), Duration::from_millis(1500));
        assert_eq!(ok("1d30s"), Duration::from_secs(86_430));
    }

    #[test]
    fn large_numbers_of_small_units() {
        assert_eq!(ok("5000000000ms"), Duration::from_secs(5_000_000));
        assert_eq!(ok("5000000000s"), Duration::from_secs(5_000_000_000));
        assert_eq!(
            ok("18446744073709551615ms"),
            Duration::from_millis(u64::MAX)
        );
    }

    #[test]
    fn empty() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("  "), Err(DurationError::Empty));
    }

    #[test]
    fn negative() {
        let e = parse_duration("-5s").unwrap_err();
        assert_eq!(e, DurationError::Negative("-5s".into()));
        assert!(e.to_string().contains("`-5s`"), "{e}");
        assert!(matches!(
            parse_duration("-1"),
            Err(DurationError::Negative(_))
        ));
    }

    #[test]
    fn missing_number() {
        for s in ["+5s", "s", "ms", "m30s"] {
            assert!(
                matches!(parse_duration(s), Err(DurationError::MissingNumber(_))),
                "{s}: {:?}",
                parse_duration(s)
            );
        }
    }

    #[test]
    fn fraction() {
        let e = parse_duration("1.5h").unwrap_err();
        assert_eq!(e, DurationError::Fraction("1.5h".into()));
        assert!(e.to_string().contains("1h30m"), "{e}");
    }

    #[test]
    fn missing_unit() {
        let e = parse_duration("1m30").unwrap_err();
        assert_eq!(
            e,
            DurationError::MissingUnit {
                input: "1m30".into(),
                number: "30".into()
            }
        );
        assert!(e.to_string().contains("`30` needs a unit"), "{e}");
    }

    #[test]
    fn unknown_unit() {
        for (s, unit) in [
            ("5x", "x"),
            ("1w", "w"),
            ("5min", "min"),
            ("3us", "us"),
            ("5 s", " s"),
        ] {
            assert_eq!(
                parse_duration(s),
                Err(DurationError::UnknownUnit {
                    input: s.into(),
                    unit: unit.into()
                }),
                "{s}"
            );
        }
        // Upper case is not a unit: `M` would read as months elsewhere.
        assert!(matches!(
            parse_duration("5M"),
            Err(DurationError::UnknownUnit { .. })
        ));
    }

    #[test]
    fn unit_order() {
        for s in ["30s1m", "1m1m", "1ms1s", "1s1d"] {
            assert_eq!(
                parse_duration(s),
                Err(DurationError::UnitOrder(s.into())),
                "{s}"
            );
        }
    }

    #[test]
    fn overflow() {
        for s in [
            "18446744073709551616",
            "18446744073709551616s",
            "213503982334602d",
            "213503982334601d8h",
            "99999999999999999999999ms",
        ] {
            assert_eq!(
                parse_duration(s),
                Err(DurationError::Overflow(s.into())),
                "{s}"
            );
        }
        assert!(ok("213503982334601d") > Duration::ZERO);
    }

    #[test]
    fn the_input_is_escaped_in_errors() {
        let e = parse_duration("5\u{1b}[2J").unwrap_err();
        assert!(!e.to_string().contains('\u{1b}'), "{e}");
    }

    /// Writes `d` in the grammar, the largest units first.
    fn render(d: Duration) -> String {
        let mut secs = d.as_secs();
        let ms = d.subsec_millis();
        let mut s = String::new();
        for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
            if secs >= len {
                s.push_str(&format!("{}{unit}", secs / len));
                secs %= len;
            }
        }
        if ms > 0 || s.is_empty() {
            s.push_str(&format!("{ms}ms"));
        }
        s
    }

    proptest! {
        #[test]
        fn round_trip(secs in 0u64..(u64::MAX / 2), ms in 0u32..1000) {
            let d = Duration::new(secs, ms * 1_000_000);
            prop_assert_eq!(parse_duration(&render(d)), Ok(d));
        }

        #[test]
        fn plain_seconds_round_trip(secs: u64) {
            prop_assert_eq!(parse_duration(&secs.to_string()), Ok(Duration::from_secs(secs)));
        }

        #[test]
        fn never_panics(s in "\\PC{0,24}") {
            let _ = parse_duration(&s);
        }
    }
}
