//! Timestamps as the database stores them.
//!
//! PostgreSQL keeps microseconds; truncating here makes a value read back
//! from either engine compare equal to the one that was written.

use chrono::{DateTime, SubsecRound, Utc};

/// The current time, truncated to microseconds.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Parses a `since`/`from`/`to` style parameter: unix seconds or RFC 3339.
pub fn parse_instant(raw: &str) -> Option<DateTime<Utc>> {
    let raw = raw.trim();
    if let Ok(secs) = raw.parse::<i64>() {
        return DateTime::from_timestamp(secs, 0);
    }
    DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|t| t.with_timezone(&Utc).trunc_subsecs(6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unix_and_rfc3339() {
        assert_eq!(parse_instant("0").map(|t| t.timestamp()), Some(0));
        assert_eq!(
            parse_instant("2024-01-02T03:04:05Z").map(|t| t.timestamp()),
            Some(1_704_164_645)
        );
        assert!(parse_instant("yesterday").is_none());
    }
}
