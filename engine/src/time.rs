//! Time helpers: human durations in config (`"250ms"`, `"1m30s"`), event
//! timestamps (epoch milliseconds or RFC 3339 strings) and the wall clock.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::error::Invalid;
use crate::value::Value;

/// A duration written in a pipeline file as `"500ms"`, `"2s"`, `"1m"`,
/// `"1h30m"`, `"1d"`, or as a plain integer number of milliseconds. At most
/// [`MAX_DURATION_MS`] (100 years): anything longer is refused when the
/// file is read, so that sums and conversions of durations never overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

/// The longest duration a pipeline file may give: 100 years (36500d), in
/// milliseconds. Adding a handful of these, or one to any event time a
/// source accepts, stays far inside `i64`.
pub const MAX_DURATION_MS: u64 = 36_500 * 86_400_000;

/// The message for a duration above [`MAX_DURATION_MS`].
fn too_long(text: &str) -> String {
    format!("duration `{text}` is too long: the maximum is 36500d (100 years)")
}

impl HumanDuration {
    /// A duration of `ms` milliseconds (not checked against the maximum:
    /// for defaults written in code).
    pub fn from_millis(ms: u64) -> Self {
        HumanDuration(Duration::from_millis(ms))
    }

    /// A duration of `ms` milliseconds read from a pipeline file: refused
    /// above [`MAX_DURATION_MS`].
    pub fn checked_from_millis(ms: u64) -> Result<Self, Invalid> {
        if ms > MAX_DURATION_MS {
            return Err(too_long(&format!("{ms}")).into());
        }
        Ok(HumanDuration::from_millis(ms))
    }

    /// The duration in milliseconds.
    pub fn as_millis(&self) -> i64 {
        self.0.as_millis().min(i64::MAX as u128) as i64
    }
}

/// Parses a human duration such as `"1m30s"`; see [`HumanDuration`].
///
/// Never panics: a number too large for its unit, or a total above
/// [`MAX_DURATION_MS`], is an error naming the maximum.
pub fn parse_duration(text: &str) -> Result<Duration, Invalid> {
    duration(text).map_err(Invalid::from)
}

fn duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        // Plain milliseconds; too many digits for a u64 is too long too.
        let ms = s.parse::<u64>().map_err(|_| too_long(text))?;
        return HumanDuration::checked_from_millis(ms)
            .map(|d| d.0)
            .map_err(|_| too_long(text));
    }
    // Summed in nanoseconds: the maximum (3.2e21 ns) fits a u128 many times.
    let max_nanos = u128::from(MAX_DURATION_MS) * 1_000_000;
    let mut total_nanos: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration `{text}` needs a unit (ms, s, m, h, d)"))?;
        if digits == 0 {
            return Err(format!("invalid duration `{text}`: expected a number"));
        }
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid number in duration `{text}`"))?;
        let unit_end = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .map_or(rest.len(), |i| i + digits);
        let unit = rest[digits..unit_end].trim();
        let scale_ms = match unit {
            "ms" => 1.0,
            "s" | "sec" | "secs" => 1_000.0,
            "m" | "min" | "mins" => 60_000.0,
            "h" | "hr" | "hrs" => 3_600_000.0,
            "d" | "day" | "days" => 86_400_000.0,
            other => {
                return Err(format!(
                    "unknown unit `{other}` in duration `{text}` (use ms, s, m, h or d)"
                ))
            }
        };
        let nanos = number * scale_ms * 1_000_000.0;
        // `number` has only digits and dots, so it is finite and not
        // negative; a huge one may still overflow to infinity.
        if !nanos.is_finite() || nanos > max_nanos as f64 {
            return Err(too_long(text));
        }
        total_nanos += nanos.round() as u128;
        if total_nanos > max_nanos {
            return Err(too_long(text));
        }
        rest = &rest[unit_end..];
    }
    let secs = (total_nanos / 1_000_000_000) as u64;
    let sub = (total_nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, sub))
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(86_400_000) && ms > 0 {
            write!(f, "{}d", ms / 86_400_000)
        } else if ms.is_multiple_of(3_600_000) && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1_000) {
            write!(f, "{}s", ms / 1_000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"500ms\", \"2s\", \"1m\" or milliseconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                let ms =
                    u64::try_from(v).map_err(|_| E::custom("a duration cannot be negative"))?;
                HumanDuration::checked_from_millis(ms).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                HumanDuration::checked_from_millis(v).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_duration(v).map(HumanDuration).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How an event-time field is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// Integers are epoch milliseconds, strings are RFC 3339.
    #[default]
    Auto,
    /// Epoch milliseconds (integer or float).
    EpochMs,
    /// Epoch seconds (integer or float).
    EpochS,
    /// An RFC 3339 / ISO 8601 timestamp string, e.g. `2024-11-21T10:00:00.123Z`.
    Rfc3339,
}

/// The earliest event time accepted: 0000-01-01T00:00:00Z, in epoch ms.
pub const MIN_EVENT_TIME_MS: i64 = -62_167_219_200_000;
/// The latest event time accepted: 9999-12-31T23:59:59.999Z, in epoch ms.
/// With durations at most [`MAX_DURATION_MS`], window bounds and watermarks
/// computed from accepted times never overflow.
pub const MAX_EVENT_TIME_MS: i64 = 253_402_300_799_999;

/// Reads an event timestamp (epoch ms) from a field value. Times outside
/// the years 0000 to 9999 are refused.
pub fn event_time_ms(value: &Value, format: TimeFormat) -> Result<i64, Invalid> {
    let ms = read_event_time_ms(value, format)?;
    if !(MIN_EVENT_TIME_MS..=MAX_EVENT_TIME_MS).contains(&ms) {
        return Err(Invalid::new(format!(
            "the event time `{value}` is out of range (years 0000 to 9999 are accepted)"
        )));
    }
    Ok(ms)
}

fn read_event_time_ms(value: &Value, format: TimeFormat) -> Result<i64, String> {
    match (format, value) {
        (TimeFormat::Auto | TimeFormat::EpochMs, Value::Int(ms)) => Ok(*ms),
        (TimeFormat::Auto | TimeFormat::EpochMs, Value::Float(ms)) if ms.is_finite() => {
            Ok(*ms as i64)
        }
        (TimeFormat::EpochS, Value::Int(s)) => s
            .checked_mul(1000)
            .ok_or_else(|| format!("timestamp {s} s is out of range")),
        (TimeFormat::EpochS, Value::Float(s)) if s.is_finite() => Ok((s * 1000.0) as i64),
        (TimeFormat::Auto | TimeFormat::Rfc3339, Value::Str(s)) => rfc3339_ms(s),
        (_, Value::Missing) => Err("the event-time field is missing".into()),
        (f, v) => Err(format!(
            "the event-time field is {} `{v}`, expected {}",
            v.type_name(),
            match f {
                TimeFormat::Auto => "epoch milliseconds or an RFC 3339 string",
                TimeFormat::EpochMs => "epoch milliseconds",
                TimeFormat::EpochS => "epoch seconds",
                TimeFormat::Rfc3339 => "an RFC 3339 string",
            }
        )),
    }
}

/// Parses an RFC 3339 timestamp (`2024-11-21T10:00:00Z`,
/// `2024-11-21 10:00:00.5+02:00`) to epoch milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Result<i64, Invalid> {
    rfc3339_ms(s).map_err(Invalid::from)
}

fn rfc3339_ms(s: &str) -> Result<i64, String> {
    let err = || format!("`{s}` is not an RFC 3339 timestamp (e.g. 2024-11-21T10:00:00Z)");
    let b = s.as_bytes();
    if b.len() < 19 {
        return Err(err());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let part = s.get(r).ok_or_else(err)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(err());
        }
        part.parse::<i64>().map_err(|_| err())
    };
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' {
        return Err(err());
    }
    if b[16] != b':' {
        return Err(err());
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(err());
    }
    let mut i = 19;
    let mut millis = 0i64;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(err());
        }
        let frac = &s[start..i.min(start + 3)];
        millis = frac.parse::<i64>().map_err(|_| err())? * 10i64.pow(3 - frac.len() as u32);
    }
    let offset_min = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let m = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if *sign == b'-' {
                -m
            } else {
                m
            }
        }
        _ => return Err(err()),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_min * 60;
    Ok(secs * 1_000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1000").unwrap(), Duration::from_secs(1));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("10").is_ok());
        assert_eq!(HumanDuration::from_millis(60_000).to_string(), "1m");
        assert_eq!(parse_duration("0.5ms").unwrap(), Duration::from_micros(500));
        assert_eq!(
            parse_duration("36500d").unwrap(),
            Duration::from_millis(MAX_DURATION_MS)
        );
    }

    /// Regression: `interval = "600000000000000000m"` panicked in
    /// `Duration::from_secs_f64`, and sums of long durations overflowed.
    #[test]
    fn durations_too_long_are_errors_naming_the_maximum() {
        for text in [
            "600000000000000000m",
            "36501d",
            "36500d1ms",
            "20000d20000d",
            "99999999999999999999999999",
            &format!("{}s", "9".repeat(400)),
            &"1000000h".repeat(50),
        ] {
            let e = parse_duration(text).unwrap_err().to_string();
            assert!(e.contains("maximum is 36500d"), "{text}: {e}");
        }
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct D {
        d: HumanDuration,
    }

    #[test]
    fn integer_durations_are_bounded_too() {
        let e = toml::from_str::<D>("d = 9223372036854775807").unwrap_err();
        assert!(e.to_string().contains("maximum is 36500d"), "{e}");
        assert!(toml::from_str::<D>("d = -1").is_err());
        assert_eq!(toml::from_str::<D>("d = 1500").unwrap().d.as_millis(), 1500);
    }

    proptest::proptest! {
        #[test]
        fn parse_duration_never_panics(text in "\\PC{0,40}") {
            let _ = parse_duration(&text);
        }

        #[test]
        fn parse_duration_never_panics_on_number_unit_chains(
            parts in proptest::collection::vec(("[0-9.]{1,30}", "(ms|s|m|h|d|x| )"), 1..8)
        ) {
            let text: String = parts.iter().map(|(n, u)| format!("{n}{u}")).collect();
            if let Ok(d) = parse_duration(&text) {
                proptest::prop_assert!(d.as_millis() <= u128::from(MAX_DURATION_MS));
            }
        }

        #[test]
        fn integer_durations_never_panic(ms in proptest::num::i64::ANY) {
            let r = toml::from_str::<D>(&format!("d = {ms}"));
            proptest::prop_assert_eq!(r.is_ok(), (0..=MAX_DURATION_MS as i64).contains(&ms));
        }
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_rfc3339_ms("2024-11-21T00:00:00.123Z").unwrap(),
            1_732_147_200_123
        );
        assert_eq!(
            parse_rfc3339_ms("2024-11-21T02:00:00+02:00").unwrap(),
            1_732_147_200_000
        );
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T00:00:00Z").unwrap(),
            951_782_400_000
        );
        assert!(parse_rfc3339_ms("2023-02-29T00:00:00Z").is_err());
        assert!(parse_rfc3339_ms("2024-11-21").is_err());
        assert!(parse_rfc3339_ms("2024-11-21T00:00:00").is_err());
        assert!(parse_rfc3339_ms("yesterday at noon!!").is_err());
    }

    #[test]
    fn event_time_formats() {
        assert_eq!(event_time_ms(&Value::Int(5), TimeFormat::Auto).unwrap(), 5);
        assert_eq!(
            event_time_ms(&Value::Int(5), TimeFormat::EpochS).unwrap(),
            5000
        );
        assert_eq!(
            event_time_ms(&Value::from("1970-01-01T00:00:01Z"), TimeFormat::Auto).unwrap(),
            1000
        );
        let e = event_time_ms(&Value::Bool(true), TimeFormat::EpochMs)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bool"), "{e}");
        assert!(event_time_ms(&Value::Missing, TimeFormat::Auto).is_err());
    }

    /// Regression: an event time near `i64::MIN` overflowed window
    /// alignment (`t.div_euclid(slide) * slide`) downstream.
    #[test]
    fn event_times_out_of_range_are_errors() {
        for v in [
            Value::Int(i64::MIN + 1),
            Value::Int(i64::MAX),
            Value::Int(MAX_EVENT_TIME_MS + 1),
            Value::Float(1e300),
            Value::Float(-1e19),
        ] {
            let e = event_time_ms(&v, TimeFormat::Auto).unwrap_err().to_string();
            assert!(e.contains("out of range"), "{v}: {e}");
        }
        assert!(event_time_ms(&Value::Int(i64::MAX / 1000), TimeFormat::EpochS).is_err());
        assert_eq!(
            event_time_ms(&Value::Int(MIN_EVENT_TIME_MS), TimeFormat::Auto).unwrap(),
            MIN_EVENT_TIME_MS
        );
        assert_eq!(
            parse_rfc3339_ms("9999-12-31T23:59:59.999Z").unwrap(),
            MAX_EVENT_TIME_MS
        );
        assert_eq!(
            parse_rfc3339_ms("0000-01-01T00:00:00Z").unwrap(),
            MIN_EVENT_TIME_MS
        );
    }
}
