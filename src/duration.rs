//! Human durations (`500ms`, `60s`, `5m`, `2h`, `30d`) as the runbooks write them. Hand-written
//! because the accepted grammar is part of our CLI and config contract and must name the allowed
//! units in its error; it is a dozen lines.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: expected a whole number followed by one of ms, s, m, h, d (e.g. 60s, 5m, 30d)")]
pub struct DurationError {
    pub input: String,
}

pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = || DurationError { input: input.to_owned() };
    let split = input.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (digits, unit) = input.split_at(split);
    let n: u64 = digits.parse().map_err(|_| err())?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(err()),
    };
    n.checked_mul(ms_per_unit).map(Duration::from_millis).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_runbook_forms() {
        assert_eq!(parse("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "5", "m", "5 m", "-5m", "5w", "99999999999999999999d"] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}

/// A duration for people, in its largest unit and the next (`4m 12s`, `2h 5m`, `3d 1h`, `850ms`).
pub fn human(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1_000, "s")];
    for (i, (size, unit)) in UNITS.iter().enumerate() {
        if ms >= *size {
            let whole = ms / size;
            let rest = match UNITS.get(i + 1) {
                Some((next, u)) if (ms % size) / next > 0 => format!(" {}{u}", (ms % size) / next),
                _ => String::new(),
            };
            return format!("{whole}{unit}{rest}");
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod human_tests {
    #[test]
    fn durations_read_in_their_largest_unit() {
        for (ms, want) in
            [(850, "850ms"), (1_000, "1s"), (252_000, "4m 12s"), (7_500_000, "2h 5m"), (90_000_000, "1d 1h")]
        {
            assert_eq!(super::human(ms), want);
        }
    }
}
