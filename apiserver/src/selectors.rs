//! Label and field selectors, with the grammar and error messages of the API server.

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
enum LabelOp {
    Exists,
    NotExists,
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Gt(i64),
    Lt(i64),
}

/// A parsed `labelSelector`; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(Vec<(String, LabelOp)>);

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    let name = k.rsplit('/').next().unwrap_or("");
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && k.matches('/').count() <= 1
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let p = part.trim();
            if p.is_empty() {
                continue;
            }
            let bad = || {
                format!(
                    "unable to parse requirement: found '{p}', expected: in, notin, =, ==, !=, gt, lt"
                )
            };
            let (key, op) = if let Some(k) = p.strip_prefix('!') {
                (k.trim().to_owned(), LabelOp::NotExists)
            } else if let Some((k, v)) = p.split_once("!=") {
                (k.trim().to_owned(), LabelOp::NotEq(v.trim().to_owned()))
            } else if let Some((k, v)) = p.split_once("==") {
                (k.trim().to_owned(), LabelOp::Eq(v.trim().to_owned()))
            } else if let Some((k, v)) = p.split_once('=') {
                (k.trim().to_owned(), LabelOp::Eq(v.trim().to_owned()))
            } else if let Some((k, v)) = p.split_once('>') {
                (
                    k.trim().to_owned(),
                    LabelOp::Gt(v.trim().parse().map_err(|_| bad())?),
                )
            } else if let Some((k, v)) = p.split_once('<') {
                (
                    k.trim().to_owned(),
                    LabelOp::Lt(v.trim().parse().map_err(|_| bad())?),
                )
            } else if let Some((k, rest)) = p.split_once(" notin ") {
                (
                    k.trim().to_owned(),
                    LabelOp::NotIn(set(rest).ok_or_else(bad)?),
                )
            } else if let Some((k, rest)) = p.split_once(" in ") {
                (k.trim().to_owned(), LabelOp::In(set(rest).ok_or_else(bad)?))
            } else {
                (p.to_owned(), LabelOp::Exists)
            };
            if !valid_key(&key) {
                return Err(format!(
                    "unable to parse requirement: <nil>: Invalid value: {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
                ));
            }
            reqs.push((key, op));
        }
        Ok(Self(reqs))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, op)| {
            let v = labels.get(k);
            match op {
                LabelOp::Exists => v.is_some(),
                LabelOp::NotExists => v.is_none(),
                LabelOp::Eq(x) => v == Some(x),
                LabelOp::NotEq(x) => v != Some(x),
                LabelOp::In(xs) => v.is_some_and(|v| xs.contains(v)),
                LabelOp::NotIn(xs) => v.is_none_or(|v| !xs.contains(v)),
                LabelOp::Gt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v > *n),
                LabelOp::Lt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v < *n),
            }
        })
    }
}

fn set(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

/// A parsed `fieldSelector`: `field=value`, `field==value`, `field!=value`, comma-separated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in s.split(',') {
            let p = part.trim();
            if p.is_empty() {
                continue;
            }
            let (field, eq, value) = if let Some((f, v)) = p.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = p.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = p.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: '{s}'; can't understand '{p}'"));
            };
            reqs.push((field.trim().to_owned(), eq, value.trim().to_owned()));
        }
        Ok(Self(reqs))
    }

    /// The first field not in `supported`, for the "field label not supported" error.
    pub fn unsupported(&self, supported: impl Fn(&str) -> bool) -> Option<&str> {
        self.0
            .iter()
            .map(|(f, _, _)| f.as_str())
            .find(|f| !supported(f))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0
            .iter()
            .all(|(f, eq, v)| (field_value(obj, f) == *v) == *eq)
    }
}

/// A field's value as a selector sees it: strings as they are, other scalars in their
/// JSON form, absent as empty.
fn field_value(obj: &Value, field: &str) -> String {
    let pointer = format!("/{}", field.replace('.', "/"));
    match obj.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

/// An object's labels.
pub fn labels(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn l(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_grammar() {
        let s = LabelSelector::parse("app=web,tier in (a, b),!legacy,env!=prod").unwrap();
        assert!(s.matches(&l(&[("app", "web"), ("tier", "a")])));
        assert!(!s.matches(&l(&[("app", "web"), ("tier", "c")])));
        assert!(!s.matches(&l(&[("app", "web"), ("tier", "a"), ("legacy", "")])));
        assert!(!s.matches(&l(&[("app", "web"), ("tier", "b"), ("env", "prod")])));
        let s = LabelSelector::parse("x notin (1),y").unwrap();
        assert!(s.matches(&l(&[("y", "")])));
        assert!(!s.matches(&l(&[("x", "1"), ("y", "")])));
        assert!(LabelSelector::parse("a b").is_err());
    }

    #[test]
    fn field_selector_reads_nested_fields() {
        let pod =
            json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "hostNetwork": true}});
        assert!(
            FieldSelector::parse("spec.nodeName=n1")
                .unwrap()
                .matches(&pod)
        );
        assert!(
            FieldSelector::parse("spec.nodeName!=n2,metadata.name==p")
                .unwrap()
                .matches(&pod)
        );
        assert!(
            FieldSelector::parse("spec.hostNetwork=true")
                .unwrap()
                .matches(&pod)
        );
        assert!(FieldSelector::parse("status.phase=").unwrap().matches(&pod));
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
