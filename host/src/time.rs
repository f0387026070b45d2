//! Times as Sluice writes them: in dead letters, the admin API, the tap,
//! fleet heartbeats and `sluice status`, one format everywhere.

use std::time::SystemTime;

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_times() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
    }
}
