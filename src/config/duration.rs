//! Human durations in the config file: `30s`, `10m`, `1h30m`, `250ms`; `0` means "no limit".

use std::{fmt, time::Duration};

use serde::{de, Deserialize, Deserializer};

/// Longest duration accepted anywhere (a year): deadlines and timeouts are added to the
/// clock, and a larger one would overflow it. `0` stays the way to say "no limit".
pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration written as a human string. `0` is allowed and means "none" where the key says so.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// `s` seconds (for defaults).
    pub const fn from_secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }

    /// Parse `30s`, `10m`, `1h 30m`, `0`. Plain numbers other than `0` are refused, because
    /// `30` could mean seconds or milliseconds and a wrong guess is a silent outage.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t == "0" {
            return Ok(Self(Duration::ZERO));
        }
        if t.starts_with('-') {
            return Err(format!(
                "invalid duration {s:?}: negative durations are not allowed"
            ));
        }
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "invalid duration {s:?}: add a unit, e.g. \"{t}s\" or \"{t}ms\""
            ));
        }
        let d = humantime::parse_duration(t).map_err(|e| {
            // humantime's messages name byte offsets ("expected number at 0"); say
            // what is wrong in the config's own terms.
            let why = match e {
                humantime::DurationError::UnknownUnit { unit, .. } => {
                    format!("unknown unit {unit:?}")
                }
                humantime::DurationError::NumberOverflow => "too large".into(),
                _ => "not a duration".into(),
            };
            format!("invalid duration {s:?}: {why} (examples: 500ms, 30s, 10m, 1h)")
        })?;
        if d > MAX {
            return Err(format!(
                "invalid duration {s:?}: longer than the 365-day maximum (0 means no limit where a key allows it)"
            ));
        }
        Ok(Self(d))
    }

    /// `None` for zero ("no limit"), else the duration.
    pub fn non_zero(self) -> Option<Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            f.write_str("0")
        } else {
            write!(f, "{}", humantime::format_duration(self.0))
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"10m\" or 0")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                HumanDuration::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                HumanDuration::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                HumanDuration::parse(&v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl serde::Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_zero() {
        assert_eq!(
            HumanDuration::parse("30s").unwrap().0,
            Duration::from_secs(30)
        );
        assert_eq!(
            HumanDuration::parse("10m").unwrap().0,
            Duration::from_secs(600)
        );
        assert_eq!(
            HumanDuration::parse("250ms").unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            HumanDuration::parse("1h 30m").unwrap().0,
            Duration::from_secs(5400)
        );
        assert_eq!(HumanDuration::parse("0").unwrap().0, Duration::ZERO);
        assert_eq!(HumanDuration::parse("365d").unwrap().0, MAX);
    }

    #[test]
    fn refuses_garbage_negative_and_unitless() {
        for bad in ["", "abc", "-5s", "30", "5 parsecs", "366d", "100000000000h"] {
            assert!(
                HumanDuration::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn displays_round_trip() {
        let d = HumanDuration::parse("90s").unwrap();
        assert_eq!(HumanDuration::parse(&d.to_string()).unwrap(), d);
        assert_eq!(HumanDuration(Duration::ZERO).to_string(), "0");
    }
}
