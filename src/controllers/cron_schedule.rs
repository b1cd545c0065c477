//! Cron schedules as CronJobs read them: the standard five fields (minute, hour, day of month,
//! month, day of week) with lists, ranges, steps, `*`/`?` and month/weekday names, plus the
//! `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight` and `@hourly`
//! descriptors (robfig/cron's standard parser, which upstream uses). As there, when both day of
//! month and day of week are restricted, a day matching either runs the job.
//!
//! Times are evaluated in a time zone (the CronJob's `timeZone`, read from the system tz
//! database, or UTC).

use k8s_openapi::jiff::civil::{Date, DateTime};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{Timestamp, ToSpan};

/// Why a schedule or time zone is unusable; the message is what the user should fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CronError {
    /// Not five fields or a descriptor.
    #[error("unparseable schedule {0:?}: expected 5 fields (minute hour day-of-month month day-of-week) or a descriptor such as @hourly")]
    Fields(String),
    /// One field is malformed or out of range.
    #[error("unparseable schedule: bad {field} field {value:?}")]
    Field { field: &'static str, value: String },
    /// The time zone is not in the tz database.
    #[error("unknown time zone {0:?}: use an IANA name such as Europe/Berlin")]
    TimeZone(String),
}

/// A parsed schedule: the allowed values of each field as bit sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    dom: u64,
    months: u64,
    dow: u64,
    /// Whether day of month / day of week were `*` or `?` (robfig's star bit).
    dom_star: bool,
    dow_star: bool,
}

const MONTHS: &[&str] = &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(s: &str, names: &[&str], offset: u32) -> Option<u32> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Some(i as u32 + offset);
    }
    s.parse().ok()
}

fn field(spec: &str, name: &'static str, min: u32, max: u32, names: &[&str], offset: u32) -> Result<u64, CronError> {
    let bad = || CronError::Field { field: name, value: spec.to_string() };
    let mut bits = 0u64;
    for part in spec.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().ok().filter(|s| *s > 0).ok_or_else(bad)?),
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, names, offset).ok_or_else(bad)?, value(b, names, offset).ok_or_else(bad)?)
        } else {
            let v = value(range, names, offset).ok_or_else(bad)?;
            // `5/15` means from 5 to the maximum in steps of 15.
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(bad());
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl Schedule {
    pub fn parse(spec: &str) -> Result<Schedule, CronError> {
        let spec = spec.trim();
        let expanded = match spec.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *".to_string(),
            "@monthly" => "0 0 1 * *".to_string(),
            "@weekly" => "0 0 * * 0".to_string(),
            "@daily" | "@midnight" => "0 0 * * *".to_string(),
            "@hourly" => "0 * * * *".to_string(),
            _ => spec.to_string(),
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        if f.len() != 5 {
            return Err(CronError::Fields(spec.to_string()));
        }
        let star = |s: &str| s.starts_with('*') || s.starts_with('?');
        let mut dow = field(f[4], "day-of-week", 0, 7, DAYS, 0)?;
        if dow & (1 << 7) != 0 {
            dow = (dow | 1) & !(1 << 7); // 7 is Sunday too
        }
        Ok(Schedule {
            minutes: field(f[0], "minute", 0, 59, &[], 0)?,
            hours: field(f[1], "hour", 0, 23, &[], 0)?,
            dom: field(f[2], "day-of-month", 1, 31, &[], 0)?,
            months: field(f[3], "month", 1, 12, MONTHS, 1)?,
            dow,
            dom_star: star(f[2]),
            dow_star: star(f[4]),
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = self.dom & (1 << d.day()) != 0;
        let dow = self.dow & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first scheduled time strictly after `after`, in `tz` (None if there is none within
    /// five years, e.g. `0 0 30 2 *`).
    pub fn next(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let local = after.to_zoned(tz.clone()).datetime();
        let mut day = local.date();
        for _ in 0..(366 * 5) {
            if self.months & (1 << day.month()) != 0 && self.day_matches(day) {
                for h in 0..24i8 {
                    if self.hours & (1 << h) == 0 {
                        continue;
                    }
                    for m in 0..60i8 {
                        if self.minutes & (1 << m) == 0 {
                            continue;
                        }
                        let dt = DateTime::from_parts(day, k8s_openapi::jiff::civil::Time::constant(0, 0, 0, 0))
                            .checked_add(h.hours())
                            .and_then(|d| d.checked_add(m.minutes()))
                            .ok()?;
                        let Ok(ts) = tz.to_ambiguous_zoned(dt).compatible().map(|z| z.timestamp()) else { continue };
                        if ts > after {
                            return Some(ts);
                        }
                    }
                }
            }
            day = day.tomorrow().ok()?;
        }
        None
    }
}

/// The named time zone from the system tz database (`/usr/share/zoneinfo`), UTC when none.
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, CronError> {
    let Some(name) = name.filter(|n| !n.is_empty()) else { return Ok(TimeZone::UTC) };
    if name == "UTC" || name == "Etc/UTC" {
        return Ok(TimeZone::UTC);
    }
    if name.contains("..") || name.starts_with('/') {
        return Err(CronError::TimeZone(name.to_string()));
    }
    let data = std::fs::read(format!("/usr/share/zoneinfo/{name}")).map_err(|_| CronError::TimeZone(name.into()))?;
    TimeZone::tzif(name, &data).map_err(|_| CronError::TimeZone(name.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn next(spec: &str, after: &str) -> Option<String> {
        let s = Schedule::parse(spec).ok()?;
        s.next(t(after), &TimeZone::UTC).map(|t| t.to_string())
    }

    #[test]
    fn every_minute_and_steps() {
        assert_eq!(next("* * * * *", "2026-01-01T10:00:30Z").as_deref(), Some("2026-01-01T10:01:00Z"));
        assert_eq!(next("*/15 * * * *", "2026-01-01T10:01:00Z").as_deref(), Some("2026-01-01T10:15:00Z"));
        assert_eq!(next("5/20 * * * *", "2026-01-01T10:26:00Z").as_deref(), Some("2026-01-01T10:45:00Z"));
        assert_eq!(next("0 9-17/4 * * *", "2026-01-01T10:00:00Z").as_deref(), Some("2026-01-01T13:00:00Z"));
    }

    #[test]
    fn descriptors_and_names() {
        assert_eq!(next("@hourly", "2026-01-01T10:00:00Z").as_deref(), Some("2026-01-01T11:00:00Z"));
        assert_eq!(next("@daily", "2026-01-01T10:00:00Z").as_deref(), Some("2026-01-02T00:00:00Z"));
        assert_eq!(next("@yearly", "2026-01-01T10:00:00Z").as_deref(), Some("2027-01-01T00:00:00Z"));
        // 2026-01-01 is a Thursday; the next Monday is the 5th.
        assert_eq!(next("30 8 * * MON", "2026-01-01T10:00:00Z").as_deref(), Some("2026-01-05T08:30:00Z"));
        assert_eq!(next("0 0 1 FEB *", "2026-01-01T10:00:00Z").as_deref(), Some("2026-02-01T00:00:00Z"));
        assert_eq!(next("0 0 * * 7", "2026-01-01T10:00:00Z").as_deref(), Some("2026-01-04T00:00:00Z"));
    }

    #[test]
    fn restricted_day_of_month_and_week_match_either() {
        // The 15th or any Monday: Monday the 5th comes first.
        assert_eq!(next("0 0 15 * 1", "2026-01-01T10:00:00Z").as_deref(), Some("2026-01-05T00:00:00Z"));
    }

    #[test]
    fn impossible_dates_have_no_next_time_and_bad_specs_are_refused() {
        assert_eq!(next("0 0 30 2 *", "2026-01-01T00:00:00Z"), None);
        assert!(matches!(Schedule::parse("* * * *"), Err(CronError::Fields(_))));
        assert!(matches!(Schedule::parse("61 * * * *"), Err(CronError::Field { field: "minute", .. })));
        assert!(matches!(Schedule::parse("*/0 * * * *"), Err(CronError::Field { .. })));
    }

    #[test]
    fn time_zones_shift_the_schedule() {
        let Ok(tz) = time_zone(Some("Europe/Berlin")) else { return }; // no tzdata on this machine
        let s = Schedule::parse("0 9 * * *").unwrap_or_else(|_| panic!("parse"));
        // 09:00 in Berlin in January is 08:00 UTC.
        assert_eq!(s.next(t("2026-01-01T00:00:00Z"), &tz), Some(t("2026-01-01T08:00:00Z")));
        assert!(time_zone(Some("Mars/Olympus")).is_err());
        assert!(time_zone(None).is_ok());
    }
}
