//! RFC 3339 timestamps as `2017-03-15T15:14:47+00:00` (the format Rails
//! and many of the APIs Berth re-implements use), from WASI's clock.

/// Now, UTC.
pub fn now_rfc3339() -> String {
    format_rfc3339(now_secs())
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SS+00:00`.
pub fn format_rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_like_the_original() {
        assert_eq!(
            super::format_rfc3339(1_489_590_887),
            "2017-03-15T15:14:47+00:00"
        );
        assert_eq!(super::format_rfc3339(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(
            super::format_rfc3339(951_782_400),
            "2000-02-29T00:00:00+00:00"
        );
    }
}
