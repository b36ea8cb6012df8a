//! RFC 3339 timestamps as `2017-03-15T15:14:47+00:00` (the format Rails
//! and many of the APIs Berth re-implements use), RFC 2822 dates as
//! `Sun, 6 Apr 2014 18:11:17 +0000` (Docker Cloud's), from WASI's clock.

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
    let (year, month, day) = civil(secs);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Seconds since the epoch as RFC 2822 in UTC, the day unpadded, as Docker
/// Cloud wrote its dates: `Sun, 6 Apr 2014 18:11:17 +0000`.
pub fn format_rfc2822(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day) = civil(secs);
    let rem = secs % 86_400;
    format!(
        "{}, {day} {} {year:04} {:02}:{:02}:{:02} +0000",
        DAYS[(secs / 86_400 % 7) as usize],
        MONTHS[month as usize - 1],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `YYYY-MM-DDTHH:MM:SS`, optional fractional seconds (dropped), then `Z`
/// or `+00:00` (what [`format_rfc3339`] and the Docker engine write) as
/// whole seconds since the epoch; none for anything else.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let (stamp, zone) = text.split_at_checked(19)?;
    let zone = match zone.strip_prefix('.') {
        Some(fraction) => {
            let zone = fraction.trim_start_matches(|c: char| c.is_ascii_digit());
            (zone.len() < fraction.len()).then_some(zone)?
        }
        None => zone,
    };
    if !matches!(zone, "Z" | "+00:00") {
        return None;
    }
    let b = stamp.as_bytes();
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let field = |range: std::ops::Range<usize>| stamp.get(range)?.parse::<u64>().ok();
    let (year, month, day) = (field(0..4)?, field(5..7)?, field(8..10)?);
    let (hour, minute, second) = (field(11..13)?, field(14..16)?, field(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let year = year as i64 - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let mp = (month as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// The year, month and day of `secs` since the epoch, in UTC.
fn civil(secs: u64) -> (i64, i64, i64) {
    let days = (secs / 86_400) as i64;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
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

    #[test]
    fn docker_cloud_dates_are_rfc_2822() {
        assert_eq!(
            super::format_rfc2822(1_396_808_077),
            "Sun, 6 Apr 2014 18:14:37 +0000"
        );
        assert_eq!(super::format_rfc2822(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            super::format_rfc2822(951_782_400),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
    }

    #[test]
    fn rfc_3339_reads_back_what_it_wrote() {
        for secs in [0, 951_782_400, 1_489_590_887, 4_102_444_799] {
            let text = super::format_rfc3339(secs);
            assert_eq!(super::parse_rfc3339(&text), Some(secs), "{text}");
        }
        assert_eq!(
            super::parse_rfc3339("2017-03-15T15:14:47Z"),
            Some(1_489_590_887)
        );
        assert_eq!(
            super::parse_rfc3339("2017-03-15T15:14:47.123456789Z"),
            Some(1_489_590_887)
        );
        for bad in [
            "",
            "2017-03-15T15:14:47.Z",
            "2017-03-15",
            "2017-03-15T15:14:47+02:00",
            "2017-13-15T15:14:47Z",
            "2017/03/15T15:14:47Z",
        ] {
            assert_eq!(super::parse_rfc3339(bad), None, "{bad}");
        }
    }
}
