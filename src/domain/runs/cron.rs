//! Cron schedules: five fields (minute, hour, day of month, month, day of week; `*`, lists,
//! ranges, steps), evaluated in UTC. Hand-written: the maintained crate for this (croner)
//! requires a calendar crate (chrono or jiff) for what is five small sets and a forward search.

use time::OffsetDateTime;

/// A parsed schedule: the allowed values of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days: Vec<bool>,
    months: Vec<bool>,
    weekdays: Vec<bool>,
    /// Both day fields restricted: a day matches if either does (cron's rule).
    days_or: bool,
}

fn field(text: &str, min: u32, max: u32, name: &str) -> Result<(Vec<bool>, bool), String> {
    let mut set = vec![false; max as usize + 1];
    let restricted = text != "*";
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                (r, s.parse::<u32>().ok().filter(|s| *s > 0).ok_or_else(|| format!("{name}: bad step in {part:?}"))?)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = a.parse::<u32>().map_err(|_| format!("{name}: {part:?} is not a number or range"))?;
            let b = b.parse::<u32>().map_err(|_| format!("{name}: {part:?} is not a number or range"))?;
            (a, b)
        } else {
            let v = range.parse::<u32>().map_err(|_| format!("{name}: {part:?} is not a number or range"))?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{name}: {part:?} is outside {min}-{max}"));
        }
        for v in (lo..=hi).step_by(step as usize) {
            set[v as usize] = true;
        }
    }
    Ok((set, restricted))
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [m, h, dom, mon, dow] = parts.as_slice() else {
            return Err(format!("{text:?}: expected five fields (minute hour day-of-month month day-of-week)"));
        };
        let (minutes, _) = field(m, 0, 59, "minute")?;
        let (hours, _) = field(h, 0, 23, "hour")?;
        let (days, dom_r) = field(dom, 1, 31, "day of month")?;
        let (months, _) = field(mon, 1, 12, "month")?;
        let (mut weekdays, dow_r) = field(dow, 0, 7, "day of week")?;
        if weekdays[7] {
            weekdays[0] = true;
        }
        Ok(Schedule { minutes, hours, days, months, weekdays, days_or: dom_r && dow_r })
    }

    fn day_matches(&self, t: &OffsetDateTime) -> bool {
        let dom = self.days[t.day() as usize];
        let dow = self.weekdays[t.weekday().number_days_from_sunday() as usize];
        if self.days_or { dom || dow } else { dom && dow }
    }

    /// The first minute strictly after `after_ms` that matches, within about four years.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let start = after_ms.div_euclid(60_000) * 60 + 60;
        let mut t = OffsetDateTime::from_unix_timestamp(start).ok()?;
        let limit = start + 4 * 366 * 86_400;
        while t.unix_timestamp() < limit {
            if !self.months[u8::from(t.month()) as usize] || !self.day_matches(&t) {
                let next_day = t.date().next_day()?.midnight().assume_utc();
                t = next_day;
                continue;
            }
            if !self.hours[t.hour() as usize] {
                t = t.replace_minute(0).ok()? + time::Duration::hours(1);
                continue;
            }
            if self.minutes[t.minute() as usize] {
                return Some(t.unix_timestamp() * 1000);
            }
            t += time::Duration::minutes(1);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap().unix_timestamp() * 1000
    }

    #[test]
    fn next_fire_times() {
        let every5 = Schedule::parse("*/5 * * * *").unwrap();
        assert_eq!(every5.next_after(at("2026-11-22T10:03:30Z")), Some(at("2026-11-22T10:05:00Z")));
        assert_eq!(every5.next_after(at("2026-11-22T10:05:00Z")), Some(at("2026-11-22T10:10:00Z")));
        let nightly = Schedule::parse("30 2 * * 1-5").unwrap();
        // 2026-11-22 is a Sunday: the next weekday 02:30 is Monday the 23rd.
        assert_eq!(nightly.next_after(at("2026-11-22T10:00:00Z")), Some(at("2026-11-23T02:30:00Z")));
        let leap = Schedule::parse("0 0 29 2 *").unwrap();
        assert_eq!(leap.next_after(at("2026-11-22T00:00:00Z")), Some(at("2028-02-29T00:00:00Z")));
        for bad in ["* * * *", "61 * * * *", "*/0 * * * *", "a * * * *", "5-1 * * * *"] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }
}
