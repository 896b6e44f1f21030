//! Vendor time formats, all to UTC.
//!
//! Accepted (docs/protocols.md#time-formats): RFC 1123 (`Mon, 11 Apr 2026 22:26:58
//! GMT`; the weekday is optional and never cross-checked, because Microsoft's own sample has
//! the wrong one), the AWS IMDS layout (`21 Jan 2019 09:00:43 GMT`, also with a one-digit day
//! as AWS's tooling renders it), RFC 3339 with or without a fraction (up to nine digits, e.g.
//! .NET's seven) and with or without an offset (none means UTC), the legacy US form
//! (`9/15/2015 6:42:51 AM`, UTC), and the empty string (not given). Anything else is an error.
//!
//! The year, as written, must be in 1..=9999 (four digits, as RFC 3339 and RFC 1123 have it):
//! chrono's `%Y` also reads signed and longer years (`-262143-01-01T00:00:00`), which an event
//! cannot carry (its JSON form has RFC 3339's four-digit year) and whose arithmetic overflows.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};

use super::{quote, NormalizeError};
use crate::event::Timestamp;

/// Parses a vendor time at JSON path `path`. `Ok(None)` for an empty string.
pub fn parse(path: &str, s: &str) -> Result<Option<Timestamp>, NormalizeError> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let err = |reason: &str| NormalizeError::Time {
        path: path.to_string(),
        value: quote(s),
        reason: reason.to_string(),
    };
    if t.len() > 64 {
        return Err(err("too long to be a time"));
    }
    // The year as written (before any offset moves it): 1..=9999.
    let year_ok = |written_year: i32, utc: Timestamp| {
        if YEARS.contains(&written_year) {
            Ok(Some(utc))
        } else {
            Err(err("the year is outside 1-9999"))
        }
    };
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return year_ok(dt.year(), dt.with_timezone(&Utc));
    }
    // RFC 3339 without an offset: UTC.
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, fmt) {
            return year_ok(n.year(), Utc.from_utc_datetime(&n));
        }
    }
    if let Some(v) = rfc1123(t) {
        return match v {
            Some((y, utc)) => year_ok(y, utc),
            None => Err(err("not a valid calendar date or time")),
        };
    }
    if let Some(v) = us_legacy(t) {
        return match v {
            Some(utc) => year_ok(utc.year(), utc),
            None => Err(err("not a valid calendar date or time")),
        };
    }
    Err(err(
        "expected RFC 1123 (Mon, 20 Apr 2026 22:26:58 GMT), RFC 3339 (2026-04-20T22:26:58Z) or M/D/YYYY h:mm:ss AM",
    ))
}

/// The years a vendor time may have, as written.
const YEARS: std::ops::RangeInclusive<i32> = 1..=9999;

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// `[Www, ]D[D] Mon YYYY HH:MM:SS ZONE`, with the year as written. `None` when the shape does
/// not match; `Some(None)` when it matches but the date or time is impossible.
fn rfc1123(t: &str) -> Option<Option<(i32, Timestamp)>> {
    let rest = match t.split_once(',') {
        Some((wd, rest))
            if wd.trim().len() == 3 && wd.trim().chars().all(|c| c.is_ascii_alphabetic()) =>
        {
            rest
        }
        Some(_) => return None,
        None => t,
    };
    let parts: Vec<&str> = rest.split_whitespace().collect();
    let [day, mon, year, hms, zone] = parts.as_slice() else {
        return None;
    };
    if !(1..=2).contains(&day.len()) || !day.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(mon))? as u32 + 1;
    if year.len() != 4 || !year.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let offset_s: i64 = match zone.to_ascii_uppercase().as_str() {
        "GMT" | "UTC" | "UT" | "Z" => 0,
        z if (z.starts_with('+') || z.starts_with('-'))
            && z.len() == 5
            && z[1..].chars().all(|c| c.is_ascii_digit()) =>
        {
            let h: i64 = z[1..3].parse().ok()?;
            let m: i64 = z[3..5].parse().ok()?;
            let v = h * 3600 + m * 60;
            if z.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    let time = NaiveTime::parse_from_str(hms, "%H:%M:%S");
    let date = NaiveDate::from_ymd_opt(year.parse().ok()?, month, day.parse().ok()?);
    Some(match (date, time) {
        (Some(d), Ok(tm)) => d
            .and_time(tm)
            .checked_sub_signed(chrono::Duration::seconds(offset_s))
            .map(|naive| (d.year(), Utc.from_utc_datetime(&naive))),
        _ => None,
    })
}

/// `M/D/YYYY h:mm:ss AM|PM` (JSON may have escaped the slashes; serde has unescaped them).
fn us_legacy(t: &str) -> Option<Option<Timestamp>> {
    let (date, rest) = t.split_once(' ')?;
    let mut dp = date.split('/');
    let (m, d, y) = (dp.next()?, dp.next()?, dp.next()?);
    if dp.next().is_some()
        || [m, d, y]
            .iter()
            .any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()))
    {
        return None;
    }
    let (hms, ampm) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
    let time = NaiveTime::parse_from_str(hms, "%H:%M:%S").ok();
    let Some(time) = time else {
        return Some(None);
    };
    let time = match ampm.to_ascii_uppercase().as_str() {
        "" => Some(time),
        "AM" | "PM" => {
            use chrono::Timelike;
            let h = time.hour();
            if !(1..=12).contains(&h) {
                None
            } else {
                let h24 = match (ampm.eq_ignore_ascii_case("PM"), h) {
                    (false, 12) => 0,
                    (false, h) => h,
                    (true, 12) => 12,
                    (true, h) => h + 12,
                };
                time.with_hour(h24)
            }
        }
        _ => return None,
    };
    let date = NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    Some(match (date, time) {
        (Some(d), Some(t)) => Some(Utc.from_utc_datetime(&d.and_time(t))),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        parse("t", s).unwrap().unwrap().to_rfc3339()
    }

    #[test]
    fn rfc1123_with_the_wrong_weekday_is_accepted() {
        // 11 April 2026 is a Saturday; Microsoft's sample says Monday (se-linux example).
        assert_eq!(
            p("Mon, 11 Apr 2026 22:26:58 GMT"),
            "2026-04-11T22:26:58+00:00"
        );
        assert_eq!(
            p("Mon, 20 Apr 2026 22:26:58 GMT"),
            "2026-04-20T22:26:58+00:00"
        );
    }

    #[test]
    fn aws_layout_with_a_one_digit_day() {
        assert_eq!(p("21 Jan 2019 09:00:43 GMT"), "2019-01-21T09:00:43+00:00");
        assert_eq!(p("5 Jan 2019 09:00:43 GMT"), "2019-01-05T09:00:43+00:00");
    }

    #[test]
    fn rfc3339_forms() {
        assert_eq!(
            p("2018-09-04T15:36:24.2240867Z"),
            "2018-09-04T15:36:24.224086700+00:00"
        );
        assert_eq!(
            p("2018-09-04T15:36:24.2240867+00:00"),
            "2018-09-04T15:36:24.224086700+00:00"
        );
        assert_eq!(p("2026-04-20T22:26:58Z"), "2026-04-20T22:26:58+00:00");
        assert_eq!(p("2026-04-20T22:26:58"), "2026-04-20T22:26:58+00:00");
        assert_eq!(p("2026-04-20T23:26:58+01:00"), "2026-04-20T22:26:58+00:00");
    }

    #[test]
    fn us_legacy_form() {
        assert_eq!(p("9/15/2015 6:42:51 AM"), "2015-09-15T06:42:51+00:00");
        assert_eq!(p("9/15/2015 6:42:51 PM"), "2015-09-15T18:42:51+00:00");
        assert_eq!(p("9/15/2015 12:05:00 AM"), "2015-09-15T00:05:00+00:00");
    }

    #[test]
    fn years_outside_1_to_9999_are_time_errors() {
        for bad in [
            // chrono's %Y reads signed and five-or-more-digit years.
            "-262143-01-01T00:00:00",
            "+262142-12-31T23:59:59",
            "-0001-01-01T00:00:00",
            "10000-01-01T00:00:00",
            "+10000-01-01 00:00:00",
            "0000-01-01T00:00:00",
            "0000-01-01T00:00:00Z",
            "0000-06-01T00:00:00+01:00",
            "Mon, 01 Jan 0000 00:00:00 GMT",
            "1 Jan 0000 00:00:00 GMT",
            "1/1/0 1:00:00 AM",
            "1/1/10000 1:00:00 AM",
            "12/31/262142 1:00:00 PM",
        ] {
            let e = parse("Events[0].NotBefore", bad);
            assert!(
                matches!(&e, Err(NormalizeError::Time { path, .. }) if path == "Events[0].NotBefore"),
                "{bad}: {e:?}"
            );
        }
        // Those chrono reads are refused for their year.
        for bad in [
            "-262143-01-01T00:00:00",
            "+10000-01-01 00:00:00",
            "0000-01-01T00:00:00Z",
            "1 Jan 0000 00:00:00 GMT",
            "1/1/10000 1:00:00 AM",
        ] {
            let e = parse("t", bad).unwrap_err().to_string();
            assert!(e.contains("the year is outside 1-9999"), "{bad}: {e}");
        }
        // The edges are years 1 and 9999 as written; an offset may move them by a day.
        assert_eq!(p("0001-01-01T00:00:00Z"), "0001-01-01T00:00:00+00:00");
        assert_eq!(p("9999-12-31T23:59:59"), "9999-12-31T23:59:59+00:00");
        assert_eq!(
            p("9999-12-31T23:00:00-02:00"),
            "+10000-01-01T01:00:00+00:00"
        );
        assert_eq!(p("1/1/1 1:00:00 AM"), "0001-01-01T01:00:00+00:00");
        assert_eq!(
            p("Mon, 01 Jan 0001 00:30:00 +0100"),
            "0000-12-31T23:30:00+00:00"
        );
    }

    #[test]
    fn empty_is_not_given_and_garbage_is_an_error() {
        assert_eq!(parse("t", "").unwrap(), None);
        assert_eq!(parse("t", "  ").unwrap(), None);
        for bad in [
            "20170702",
            "yesterday",
            "32 Jan 2019 09:00:43 GMT",
            "Mon, 11 Foo 2026 22:26:58 GMT",
            "13/45/2015 6:42:51 AM",
            "2026-02-30T00:00:00Z",
        ] {
            let e = parse("Events[0].NotBefore", bad).unwrap_err();
            assert!(matches!(e, NormalizeError::Time { .. }), "{bad}: {e:?}");
            assert!(e.to_string().contains("Events[0].NotBefore"), "{e}");
        }
    }

    // ---- cargo-mutants survivors: each test pins one boundary of the parser ----

    /// Padded to `len` characters with spaces between the date and the time (RFC 1123 splits
    /// on any whitespace, so the padding changes the length and nothing else).
    fn padded_rfc1123(len: usize) -> String {
        let (head, tail) = ("Mon, 20 Apr 2026", "22:26:58 GMT");
        format!("{head}{}{tail}", " ".repeat(len - head.len() - tail.len()))
    }

    #[test]
    fn a_time_of_64_characters_is_read_and_65_is_too_long() {
        // The length cap guards the parsers against huge strings; it must not cut a valid time
        // at exactly the limit, and it must refuse one past it even when it would parse.
        assert_eq!(p(&padded_rfc1123(64)), "2026-04-20T22:26:58+00:00");
        let e = parse("t", &padded_rfc1123(65)).unwrap_err().to_string();
        assert!(e.contains("too long to be a time"), "{e}");
    }

    #[test]
    fn rfc1123_weekday_must_be_three_letters() {
        // Anything before the comma other than a three-letter weekday means it is not RFC 1123:
        // "Monday," or "Mo1," must not be skipped over as if it were a weekday.
        for bad in [
            "Monday, 20 Apr 2026 22:26:58 GMT",
            "Mo1, 20 Apr 2026 22:26:58 GMT",
        ] {
            let e = parse("t", bad).unwrap_err().to_string();
            assert!(e.contains("expected RFC 1123"), "{bad}: {e}");
        }
    }

    #[test]
    fn rfc1123_day_and_year_digit_counts_are_exact() {
        // A three-digit day ("011") or a five-digit year ("02026") is not RFC 1123, even though
        // the number it spells is a valid day or year.
        for bad in [
            "Mon, 011 Apr 2026 22:26:58 GMT",
            "011 Apr 2026 22:26:58 GMT",
            "Mon, 20 Apr 02026 22:26:58 GMT",
        ] {
            let e = parse("t", bad).unwrap_err().to_string();
            assert!(e.contains("expected RFC 1123"), "{bad}: {e}");
        }
    }

    #[test]
    fn rfc1123_numeric_zone_is_a_sign_and_exactly_four_digits() {
        // "+01000" (five digits) and "00100" (no sign) are not numeric zones; reading their
        // first four digits would shift the time by an hour that was never written.
        for bad in [
            "Mon, 20 Apr 2026 22:26:58 +01000",
            "Mon, 20 Apr 2026 22:26:58 00100",
            "Mon, 20 Apr 2026 22:26:58 ++100",
        ] {
            let e = parse("t", bad).unwrap_err().to_string();
            assert!(e.contains("expected RFC 1123"), "{bad}: {e}");
        }
    }

    #[test]
    fn rfc1123_numeric_zones_with_minutes_and_west_of_utc() {
        // India is +05:30 (the minutes count, and add to the hours); a US zone is west of UTC
        // (its local time is behind, so UTC is later).
        assert_eq!(
            p("Mon, 20 Apr 2026 22:26:58 +0530"),
            "2026-04-20T16:56:58+00:00"
        );
        assert_eq!(
            p("Mon, 20 Apr 2026 14:26:58 -0800"),
            "2026-04-20T22:26:58+00:00"
        );
    }

    #[test]
    fn us_legacy_needs_exactly_three_unsigned_date_parts() {
        // "9/15/2015/1" has a fourth part and "9/+15/2015" a sign: neither is the M/D/YYYY
        // form, though Rust's integer parsing would accept "+15" and the first three parts.
        for bad in ["9/15/2015/1 6:42:51 AM", "9/+15/2015 6:42:51 AM"] {
            let e = parse("t", bad).unwrap_err().to_string();
            assert!(e.contains("expected RFC 1123"), "{bad}: {e}");
        }
    }

    #[test]
    fn us_legacy_without_am_pm_is_a_24_hour_time() {
        // The endpoint's form without the AM/PM marker: the hour is read as written.
        assert_eq!(p("9/15/2015 18:42:51"), "2015-09-15T18:42:51+00:00");
    }
}
