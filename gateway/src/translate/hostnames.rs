//! Hostname intersection between listeners and routes (Gateway API "hostname matching").

/// The hostnames a route serves on a listener: `None` in the result means any host. An
/// empty result means the route does not intersect the listener.
pub fn intersect<S: AsRef<str>>(listener: Option<&str>, route: &[S]) -> Vec<Option<String>> {
    match (listener, route.is_empty()) {
        (None, true) => vec![None],
        (None, false) => route.iter().map(|h| Some(h.as_ref().to_owned())).collect(),
        (Some(l), true) => vec![Some(l.to_owned())],
        (Some(l), false) => {
            let mut out: Vec<Option<String>> = Vec::new();
            for r in route {
                let r = r.as_ref();
                let pick = if r == l || covers(l, r) {
                    Some(r)
                } else if covers(r, l) {
                    Some(l)
                } else {
                    None
                };
                if let Some(p) = pick
                    && !out.iter().any(|o| o.as_deref() == Some(p))
                {
                    out.push(Some(p.to_owned()));
                }
            }
            out
        }
    }
}

/// Whether wildcard `pattern` covers `name` (an exact name or a narrower wildcard).
fn covers(pattern: &str, name: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix('*') else {
        return false;
    };
    let name_rest = name.strip_prefix('*').unwrap_or(name);
    name_rest.len() > suffix.len() && name_rest.ends_with(suffix)
}

/// Specificity order for listeners and virtual hosts: exact names first, then wildcards by
/// decreasing length, then the catch-all.
pub fn specificity(h: Option<&str>) -> (u8, std::cmp::Reverse<usize>) {
    match h {
        Some(h) if !h.starts_with('*') => (0, std::cmp::Reverse(h.len())),
        Some(h) => (1, std::cmp::Reverse(h.len())),
        None => (2, std::cmp::Reverse(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    fn s(xs: &[&str]) -> Vec<Option<String>> {
        xs.iter().map(|s| Some(s.to_string())).collect()
    }

    #[test]
    fn intersection_cases_from_the_spec() {
        assert_eq!(intersect::<&str>(None, &[]), vec![None]);
        assert_eq!(intersect::<&str>(Some("foo.com"), &[]), s(&["foo.com"]));
        assert_eq!(
            intersect(Some("*.example.com"), &v(&["a.example.com", "other.org"])),
            s(&["a.example.com"])
        );
        assert_eq!(
            intersect(Some("a.example.com"), &v(&["*.example.com"])),
            s(&["a.example.com"])
        );
        assert_eq!(
            intersect(Some("*.example.com"), &v(&["*.foo.example.com"])),
            s(&["*.foo.example.com"])
        );
        assert_eq!(
            intersect(Some("*.foo.example.com"), &v(&["*.example.com"])),
            s(&["*.foo.example.com"])
        );
        assert!(intersect(Some("example.com"), &v(&["*.example.com"])).is_empty());
        assert!(intersect(Some("foo.com"), &v(&["bar.com"])).is_empty());
        assert_eq!(
            intersect(Some("*.example.com"), &v(&["*.example.com"])),
            s(&["*.example.com"])
        );
    }

    #[test]
    fn specificity_orders_exact_then_longer_wildcards_then_any() {
        let mut hs = vec![
            None,
            Some("*.com"),
            Some("a.b.com"),
            Some("*.b.com"),
            Some("b.com"),
        ];
        hs.sort_by_key(|h| specificity(*h));
        assert_eq!(
            hs,
            vec![
                Some("a.b.com"),
                Some("b.com"),
                Some("*.b.com"),
                Some("*.com"),
                None
            ]
        );
    }
}
