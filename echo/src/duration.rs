//! Go duration strings (`time.ParseDuration`), the format of the suite's `delay` parameter.

use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

/// Parses a Go duration: a sequence of decimal numbers, each with an optional fraction and
/// a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), such as `300ms`, `1.5s` or `1h2m`.
/// `0` alone needs no unit. A leading `+` is accepted; negative durations are rejected
/// (they make no sense as a delay), as is anything longer than `u64::MAX` nanoseconds.
pub fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    let fail = |reason| DurationError {
        input: input.to_owned(),
        reason,
    };
    let mut rest = input.strip_prefix('+').unwrap_or(input);
    if rest.starts_with('-') {
        return Err(fail("negative durations are not allowed"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(fail("empty"));
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(after) => {
                let len = after.bytes().take_while(u8::is_ascii_digit).count();
                after.split_at(len)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(fail("expected a number"));
        }
        let unit_len = after
            .char_indices()
            .find(|&(_, c)| c == '.' || c.is_ascii_digit())
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(fail("missing unit")),
            _ => return Err(fail("unknown unit")),
        };
        let too_long = || fail("too long");
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| too_long())?
        };
        let mut nanos = int.checked_mul(unit_nanos).ok_or_else(too_long)?;
        // The fraction, scaled digit by digit; digits below a nanosecond are dropped.
        let mut scale = unit_nanos;
        for digit in frac_part.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            nanos += u128::from(digit - b'0') * scale;
        }
        total = total.checked_add(nanos).ok_or_else(too_long)?;
        if total > u128::from(u64::MAX) {
            return Err(too_long());
        }
        rest = after;
    }
    Ok(Duration::from_nanos(
        u64::try_from(total).map_err(|_| fail("too long"))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_go_durations() {
        let ms = Duration::from_millis;
        for (input, want) in [
            ("0", Duration::ZERO),
            ("1s", ms(1000)),
            ("+1s", ms(1000)),
            ("100ms", ms(100)),
            ("1.5s", ms(1500)),
            (".5s", ms(500)),
            ("1.s", ms(1000)),
            ("2m", ms(120_000)),
            ("1h2m3s", ms(3_723_000)),
            ("1m30.5s", ms(90_500)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("0.0000000001s", Duration::ZERO),
        ] {
            assert_eq!(parse_go_duration(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn rejects_malformed_durations() {
        for input in [
            "", "1", "s", "1x", "1.5", "-1s", ".s", "1s2", "1 s", "1sec", "abc", "1e3s",
        ] {
            assert!(parse_go_duration(input).is_err(), "{input:?} was accepted");
        }
        assert!(parse_go_duration("100000000h").is_err());
    }
}
