//! The annotations this plugin understands, parsed once per Ingress.

use std::collections::BTreeMap;

use isobar_guest::types::{Diagnostic, ObjectRef, RetryPolicy};

pub const RESPONSE_TIMEOUT: &str = "isobar.dev/response-timeout";
pub const RETRY_ON: &str = "isobar.dev/retry-on";
pub const NUM_RETRIES: &str = "isobar.dev/num-retries";
pub const PER_TRY_TIMEOUT: &str = "isobar.dev/per-try-timeout";
pub const FORCE_SSL_REDIRECT: &str = "ingress.kubernetes.io/force-ssl-redirect";
/// Deprecated by `spec.ingressClassName`, still honoured.
pub const LEGACY_CLASS: &str = "kubernetes.io/ingress.class";

/// Envoy router `retry_on` conditions, HTTP and gRPC. Anything else would be
/// rejected by Envoy for the whole route table, so it is refused here.
const RETRY_CONDITIONS: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Route policy and behaviour switches taken from annotations.
#[derive(Debug, Default, PartialEq)]
pub struct Annotations {
    pub timeout_ms: Option<u32>,
    pub retry: Option<RetryPolicy>,
    pub force_ssl_redirect: bool,
}

impl Annotations {
    /// Parses what it can; every invalid value becomes a diagnostic on
    /// `object` and is otherwise ignored.
    pub fn parse(
        annotations: &BTreeMap<String, String>,
        object: &ObjectRef,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> Annotations {
        let mut invalid = |key: &str, value: &str, why: &str| {
            diagnostics.push(Diagnostic::warning(
                object.clone(),
                "InvalidAnnotation",
                format!("annotation {key}={value:?} ignored: {why}"),
            ));
        };
        let mut parsed = Annotations::default();

        if let Some(value) = annotations.get(RESPONSE_TIMEOUT) {
            match parse_timeout_ms(value) {
                Ok(ms) => parsed.timeout_ms = Some(ms),
                Err(why) => invalid(RESPONSE_TIMEOUT, value, &why),
            }
        }

        let num_retries = annotations.get(NUM_RETRIES);
        let per_try = annotations.get(PER_TRY_TIMEOUT);
        match annotations.get(RETRY_ON) {
            Some(value) => match parse_retry_on(value) {
                Ok(retry_on) => {
                    // Envoy's default is one retry.
                    let mut retry = RetryPolicy::new(retry_on, 1);
                    if let Some(n) = num_retries {
                        match n.trim().parse::<u32>() {
                            Ok(n) => retry.attempts = n,
                            Err(_) => invalid(NUM_RETRIES, n, "not a non-negative integer"),
                        }
                    }
                    if let Some(t) = per_try {
                        match parse_duration_ms(t) {
                            Ok(ms) if ms > 0 => retry.per_try_timeout_ms = Some(ms),
                            Ok(_) => invalid(PER_TRY_TIMEOUT, t, "must be positive"),
                            Err(why) => invalid(PER_TRY_TIMEOUT, t, &why),
                        }
                    }
                    parsed.retry = Some(retry);
                }
                Err(why) => invalid(RETRY_ON, value, &why),
            },
            None => {
                for (key, value) in [(NUM_RETRIES, num_retries), (PER_TRY_TIMEOUT, per_try)] {
                    if let Some(value) = value {
                        invalid(key, value, &format!("only meaningful with {RETRY_ON}"));
                    }
                }
            }
        }

        if let Some(value) = annotations.get(FORCE_SSL_REDIRECT) {
            match value.trim() {
                "true" => parsed.force_ssl_redirect = true,
                "false" => {}
                _ => invalid(FORCE_SSL_REDIRECT, value, "must be \"true\" or \"false\""),
            }
        }
        parsed
    }
}

/// A comma-separated list of known conditions, normalised (no spaces, no
/// duplicates).
fn parse_retry_on(value: &str) -> Result<String, String> {
    let mut conditions: Vec<&str> = Vec::new();
    for condition in value.split(',').map(str::trim) {
        if !RETRY_CONDITIONS.contains(&condition) {
            return Err(format!("unknown retry condition {condition:?}"));
        }
        if !conditions.contains(&condition) {
            conditions.push(condition);
        }
    }
    Ok(conditions.join(","))
}

/// A timeout: a duration, where `0s` and `infinity` both mean "none" (Envoy
/// treats a zero route timeout as disabled).
fn parse_timeout_ms(value: &str) -> Result<u32, String> {
    match value.trim() {
        "infinity" | "infinite" => Ok(0),
        other => parse_duration_ms(other),
    }
}

/// A Go duration (`300ms`, `1.5s`, `1h30m`) in whole milliseconds, rounded
/// up so that a positive duration never becomes 0 ("no timeout").
pub fn parse_duration_ms(value: &str) -> Result<u32, String> {
    const UNITS: &[(&str, u128)] = &[
        ("ns", 1),
        ("us", 1_000),
        ("µs", 1_000),
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
    ];
    let value = value.trim();
    if value == "0" {
        return Ok(0);
    }
    if value.is_empty() {
        return Err("empty duration".into());
    }
    let mut rest = value;
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{value:?} lacks a unit (ms, s, m, h, ...)"))?;
        let (number, tail) = rest.split_at(number_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let (_, scale) = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .ok_or_else(|| format!("unknown unit {unit:?} in {value:?}"))?;
        nanos += scaled(number, *scale).ok_or_else(|| format!("invalid number in {value:?}"))?;
        rest = tail;
    }
    let ms = nanos.div_ceil(1_000_000);
    u32::try_from(ms).map_err(|_| format!("{value:?} is too long"))
}

/// `number` (digits with an optional fraction) times `scale`, exactly.
fn scaled(number: &str, scale: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut total = whole.checked_mul(scale)?;
    // Fractions finer than a nanosecond are dropped, as Go does.
    let mut place = scale;
    for digit in fraction.chars() {
        place /= 10;
        total = total.checked_add(u128::from(digit.to_digit(10)?) * place)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("15s"), Ok(15_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1_500));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("0s"), Ok(0));
        assert_eq!(parse_duration_ms("0"), Ok(0));
        // Rounded up: a positive duration never means "no timeout".
        assert_eq!(parse_duration_ms("1us"), Ok(1));
        assert_eq!(parse_duration_ms("250µs"), Ok(1));
        for bad in ["", "15", "s", "15 s", "-1s", "1d", "1..5s", "10000h"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?} should be invalid");
        }
        assert_eq!(parse_timeout_ms("infinity"), Ok(0));
    }

    #[test]
    fn retry_conditions() {
        assert_eq!(
            parse_retry_on("5xx, connect-failure,5xx"),
            Ok("5xx,connect-failure".into())
        );
        assert!(parse_retry_on("5xx,bogus").is_err());
        assert!(parse_retry_on("").is_err());
    }
}
