//! Time windows on rules: the hours of the day and the days of the week a rule allows, in a
//! named time zone. "Verify every request" includes when it is made; the time is a fact of the
//! decision, so a window is checked against the facts' time, never the clock.

use crate::reason::{Code, Reason};
use jiff::Timestamp;
use jiff::civil::Weekday;
use jiff::tz::TimeZone;

/// When a rule applies: `hours` (a daily span of local time, which may cross midnight) on
/// `days`, in `zone`. A window with neither allows every moment.
#[derive(Debug, Clone)]
pub struct Window {
    /// The time zone's name as written (`Europe/Paris`, `UTC`), for reasons.
    zone_name: String,
    zone: TimeZone,
    /// Minutes after local midnight: from `start` (included) to `end` (excluded). `start >
    /// end` crosses midnight (`22:00-06:00`); the night's morning belongs to the day it
    /// started on, for `days`.
    hours: Option<(u16, u16)>,
    /// Bit `n` for the day `n` days after Monday; 0 when any day will do.
    days: u8,
}

/// The names `days` takes (either, in any case), Monday first.
const DAYS: [(&str, &str); 7] = [
    ("mon", "monday"),
    ("tue", "tuesday"),
    ("wed", "wednesday"),
    ("thu", "thursday"),
    ("fri", "friday"),
    ("sat", "saturday"),
    ("sun", "sunday"),
];

impl Window {
    /// The window of `hours` (`"HH:MM-HH:MM"`), `days` and `zone` (an IANA name; `UTC` when
    /// `None`). `Err` names the setting at fault and says what is wrong.
    pub fn new(
        hours: Option<&str>,
        days: &[String],
        zone: Option<&str>,
    ) -> Result<Self, (&'static str, String)> {
        let zone_name = zone.unwrap_or("UTC");
        let tz = jiff::tz::db().get(zone_name).map_err(|_| {
            (
                "timezone",
                format!("unknown time zone {zone_name:?}: write an IANA name, like \"Europe/Paris\" or \"UTC\""),
            )
        })?;
        let hours = hours
            .map(parse_hours)
            .transpose()
            .map_err(|e| ("hours", e))?;
        let mut mask = 0u8;
        for day in days {
            let lower = day.to_ascii_lowercase();
            let Some(i) = DAYS
                .iter()
                .position(|(short, long)| lower == *short || lower == *long)
            else {
                return Err((
                    "days",
                    format!("{day:?} is not a day: write \"mon\", \"tue\", ... \"sun\""),
                ));
            };
            mask |= 1 << i;
        }
        Ok(Self {
            zone_name: zone_name.to_owned(),
            zone: tz,
            hours,
            days: mask,
        })
    }

    /// `Ok` when `time` (Unix seconds) falls in the window.
    pub fn check(&self, time: i64) -> Result<(), Reason> {
        let at = Timestamp::from_second(time).unwrap_or(Timestamp::UNIX_EPOCH);
        let local = self.zone.to_datetime(at);
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        let mut day = local.weekday();
        if let Some((start, end)) = self.hours {
            let inside = if start <= end {
                (start..end).contains(&minute)
            } else {
                minute >= start || minute < end
            };
            if !inside {
                return Err(Reason::new(
                    Code::OutsideHours,
                    format!(
                        "outside the allowed hours {} ({}): it is {:02}:{:02} there",
                        span(start, end),
                        self.zone_name,
                        local.hour(),
                        local.minute()
                    ),
                ));
            }
            if start > end && minute < end {
                // The small hours of a night that started the day before.
                day = day.previous();
            }
        }
        if self.days != 0 && self.days & (1 << day.to_monday_zero_offset()) == 0 {
            return Err(Reason::new(
                Code::OutsideDays,
                format!(
                    "not on an allowed day ({}): it is {} there",
                    self.day_list(),
                    day_name(day)
                ),
            ));
        }
        Ok(())
    }

    fn day_list(&self) -> String {
        DAYS.iter()
            .enumerate()
            .filter(|(i, _)| self.days & (1 << i) != 0)
            .map(|(_, (short, _))| *short)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn day_name(day: Weekday) -> &'static str {
    DAYS[day.to_monday_zero_offset() as usize].0
}

fn span(start: u16, end: u16) -> String {
    format!(
        "{:02}:{:02}-{:02}:{:02}",
        start / 60,
        start % 60,
        end / 60,
        end % 60
    )
}

/// `"08:00-19:00"` as minutes after midnight; `24:00` is the end of the day.
fn parse_hours(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{text:?} is not a span of hours: write it like \"08:00-19:00\"");
    let (start, end) = text.split_once('-').ok_or_else(bad)?;
    let minute = |t: &str| -> Option<u16> {
        let (h, m) = t.trim().split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
    };
    let (start, end) = (minute(start).ok_or_else(bad)?, minute(end).ok_or_else(bad)?);
    if start == end {
        return Err(format!(
            "{text:?} is an empty span: leave `hours` out to allow the whole day"
        ));
    }
    if start == 24 * 60 {
        return Err(bad());
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> i64 {
        rfc3339
            .parse::<Timestamp>()
            .map(|t| t.as_second())
            .unwrap_or_default()
    }

    fn window(hours: Option<&str>, days: &[&str], zone: &str) -> Window {
        let days: Vec<String> = days.iter().map(|d| (*d).to_owned()).collect();
        match Window::new(hours, &days, Some(zone)) {
            Ok(w) => w,
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn office_hours_in_paris_follow_summer_time() {
        let office = window(
            Some("08:00-19:00"),
            &["mon", "tue", "wed", "thu", "fri"],
            "Europe/Paris",
        );
        // Winter: UTC+1. 07:30 UTC is 08:30 in Paris.
        assert!(office.check(at("2026-01-13T07:30:00Z")).is_ok());
        assert!(office.check(at("2026-01-13T06:59:00Z")).is_err());
        assert!(office.check(at("2026-01-13T17:59:00Z")).is_ok());
        assert!(office.check(at("2026-01-13T18:00:00Z")).is_err());
        // Summer: UTC+2. 06:30 UTC is 08:30 in Paris, 17:30 UTC is 19:30.
        assert!(office.check(at("2026-07-14T06:30:00Z")).is_ok());
        assert!(office.check(at("2026-07-14T17:30:00Z")).is_err());
        // The clocks go forward on Sunday 29 March 2026 and back on Sunday 25 October: the
        // Monday after each is judged in its own offset.
        assert!(office.check(at("2026-03-30T06:05:00Z")).is_ok());
        assert!(office.check(at("2026-03-30T05:55:00Z")).is_err());
        assert!(office.check(at("2026-10-26T07:05:00Z")).is_ok());
        assert!(office.check(at("2026-10-26T06:55:00Z")).is_err());
        // Saturday.
        let saturday = office.check(at("2026-01-17T10:00:00Z"));
        let reason = saturday.err().map(|r| (r.code, r.text));
        assert_eq!(
            reason,
            Some((
                Code::OutsideDays,
                "not on an allowed day (mon, tue, wed, thu, fri): it is sat there".to_owned()
            ))
        );
        let early = office.check(at("2026-01-13T05:00:00Z")).err();
        assert_eq!(
            early.map(|r| r.text),
            Some(
                "outside the allowed hours 08:00-19:00 (Europe/Paris): it is 06:00 there"
                    .to_owned()
            )
        );
    }

    #[test]
    fn a_night_shift_crosses_midnight_and_belongs_to_the_day_it_started() {
        let night = window(Some("22:00-06:00"), &["fri"], "UTC");
        assert!(night.check(at("2026-01-16T23:00:00Z")).is_ok()); // Friday night
        assert!(night.check(at("2026-01-17T05:59:00Z")).is_ok()); // its Saturday morning
        assert!(night.check(at("2026-01-17T06:00:00Z")).is_err());
        assert!(night.check(at("2026-01-16T05:00:00Z")).is_err()); // Thursday's night
        assert!(night.check(at("2026-01-16T12:00:00Z")).is_err());
    }

    #[test]
    fn days_alone_and_the_end_of_the_day() {
        let weekend = window(None, &["Saturday", "SUN"], "Asia/Tokyo");
        // 2026-01-16 is a Friday; 16:00 UTC is Saturday 01:00 in Tokyo.
        assert!(weekend.check(at("2026-01-16T16:00:00Z")).is_ok());
        assert!(weekend.check(at("2026-01-16T14:00:00Z")).is_err());
        let evening = window(Some("18:00-24:00"), &[], "UTC");
        assert!(evening.check(at("2026-01-16T23:59:59Z")).is_ok());
        assert!(evening.check(at("2026-01-17T00:00:00Z")).is_err());
    }

    #[test]
    fn bad_windows_say_what_is_wrong() {
        let days = |d: &[&str]| d.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>();
        for (hours, d, zone, field) in [
            (Some("8-19"), days(&[]), None, "hours"),
            (Some("08:00"), days(&[]), None, "hours"),
            (Some("08:00-08:00"), days(&[]), None, "hours"),
            (Some("08:60-09:00"), days(&[]), None, "hours"),
            (Some("25:00-26:00"), days(&[]), None, "hours"),
            (Some("24:00-06:00"), days(&[]), None, "hours"),
            (None, days(&["mo"]), None, "days"),
            (None, days(&["funday"]), None, "days"),
            (None, days(&[]), Some("Mars/Olympus"), "timezone"),
        ] {
            let got = Window::new(hours, &d, zone).err().map(|(f, _)| f);
            assert_eq!(got, Some(field), "{hours:?} {d:?} {zone:?}");
        }
    }
}
