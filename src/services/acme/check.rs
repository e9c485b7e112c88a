//! What a certificate must be: when it is due for renewal, and whether the one a CA issued is
//! what was ordered.

use crate::config;

/// When a certificate is due for renewal: two thirds into its lifetime.
pub fn renew_at(info: &config::tls::CertInfo) -> i64 {
    info.not_before + (info.not_after - info.not_before) * 2 / 3
}

/// Whether a certificate the CA issued is what was ordered: valid now (5 minutes of clock
/// skew allowed), not due for renewal at once, and for every name.
pub(crate) fn issued_as_ordered(
    info: &config::tls::CertInfo,
    names: &[String],
    now: i64,
) -> Result<(), String> {
    const SKEW: i64 = 300;
    if info.not_before > now + SKEW {
        return Err(format!(
            "the CA's certificate is not valid before {} (now {now})",
            info.not_before
        ));
    }
    if renew_at(info) <= now {
        return Err(format!(
            "the CA's certificate expires at {} and would be due for renewal at once",
            info.not_after
        ));
    }
    if let Some(missing) = names
        .iter()
        .find(|n| !info.names.iter().any(|c| c.eq_ignore_ascii_case(n)))
    {
        return Err(format!(
            "the CA's certificate is not for {} (it names {})",
            crate::api::printable(missing),
            crate::api::printable(&info.names.join(", "))
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_not_as_ordered_is_a_failed_order() {
        let now = 1_800_000_000;
        let info = |names: &[&str], nb: i64, na: i64| config::tls::CertInfo {
            names: names.iter().map(|n| n.to_string()).collect(),
            issuer: "ca".into(),
            not_before: nb,
            not_after: na,
        };
        let ordered = vec!["a.example".to_string(), "b.example".to_string()];
        let good = info(&["a.example", "B.example"], now - 60, now + 90 * 86_400);
        assert!(issued_as_ordered(&good, &ordered, now).is_ok());
        let expired = info(&["a.example", "b.example"], now - 100, now - 1);
        assert!(issued_as_ordered(&expired, &ordered, now).is_err());
        let due = info(&["a.example", "b.example"], now - 90 * 86_400, now + 86_400);
        assert!(issued_as_ordered(&due, &ordered, now).is_err());
        let later = info(&["a.example", "b.example"], now + 86_400, now + 90 * 86_400);
        assert!(issued_as_ordered(&later, &ordered, now).is_err());
        let short = info(&["a.example"], now - 60, now + 90 * 86_400);
        let e = issued_as_ordered(&short, &ordered, now).unwrap_err();
        assert!(e.contains("b.example"), "{e}");
    }
}
