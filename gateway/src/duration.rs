//! Gateway API durations (GEP-2257): one to four `<number><unit>` parts, units h, m, s, ms,
//! for example `1h`, `10s`, `500ms`, `1m30s`.

use std::time::Duration;

pub fn parse(s: &str) -> Option<Duration> {
    let mut rest = s;
    let mut total = Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += unit * u32::try_from(n).ok()?;
        parts += 1;
    }
    (1..=4).contains(&parts).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gep_2257_examples() {
        assert_eq!(parse("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("0s"), Some(Duration::ZERO));
        assert_eq!(parse("1m1s10ms"), Some(Duration::from_millis(61_010)));
        for bad in ["", "1", "1.5s", "s", "123456s", "1h1m1s1ms1h", "-1s", "1d"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
