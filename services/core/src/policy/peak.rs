//! Peak windows: calendar ranges in the retailer's time zone, resolved to UTC instants
//! once at load so the hot path only compares timestamps.

use chrono::{DateTime, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// A resolved peak window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeakWindow {
    /// Name from the config, used in reasons.
    pub name: String,
    /// First instant inside the window.
    pub starts_at: DateTime<Utc>,
    /// First instant after the window.
    pub ends_at: DateTime<Utc>,
}

impl PeakWindow {
    /// Whether `now` falls inside the window.
    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        self.starts_at <= now && now < self.ends_at
    }
}

/// Parses a local calendar time (`YYYY-MM-DD`, `YYYY-MM-DDTHH:MM` or
/// `YYYY-MM-DDTHH:MM:SS`) in `tz`. An ambiguous local time (clocks going back) resolves to
/// the earlier instant; a time inside a daylight-saving gap is an error.
pub(crate) fn parse_local(text: &str, tz: Tz) -> Result<DateTime<Utc>, String> {
    let naive = if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        date.and_hms_opt(0, 0, 0)
            .ok_or_else(|| format!("{text:?} is not a valid date"))?
    } else if let Ok(dt) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S") {
        dt
    } else if let Ok(dt) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M") {
        dt
    } else {
        return Err(format!(
            "{text:?} is not a local date or time (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)"
        ));
    };
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => Ok(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(earlier, _) => Ok(earlier.with_timezone(&Utc)),
        LocalResult::None => Err(format!(
            "{text:?} does not exist in {tz} (daylight-saving gap)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_dates_resolve_in_the_retailers_zone() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let t = parse_local("2025-11-27", tz).unwrap();
        assert_eq!(t.to_rfc3339(), "2025-11-27T05:00:00+00:00");
        let t = parse_local("2025-07-01T06:30", tz).unwrap();
        assert_eq!(t.to_rfc3339(), "2025-07-01T10:30:00+00:00");
    }

    #[test]
    fn gaps_and_garbage_are_errors() {
        let tz: Tz = "America/New_York".parse().unwrap();
        assert!(
            parse_local("2025-03-09T02:30", tz)
                .unwrap_err()
                .contains("daylight-saving gap")
        );
        assert!(parse_local("next friday", tz).is_err());
        // ambiguous: the earlier (EDT) instant
        let t = parse_local("2025-11-02T01:30", tz).unwrap();
        assert_eq!(t.to_rfc3339(), "2025-11-02T05:30:00+00:00");
    }

    #[test]
    fn windows_are_half_open() {
        let tz: Tz = "UTC".parse().unwrap();
        let w = PeakWindow {
            name: "bfcm".into(),
            starts_at: parse_local("2025-11-27", tz).unwrap(),
            ends_at: parse_local("2025-12-02", tz).unwrap(),
        };
        assert!(w.contains(w.starts_at));
        assert!(!w.contains(w.ends_at));
    }
}
