//! The PATCH bodies the API server accepts.

use serde_json::{Map, Value};

/// RFC 7386 JSON merge patch: objects merge, `null` deletes, everything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Strategic merge patch for built-in kinds, as far as Cedille's objects need it: a merge
/// patch in which lists of objects with a `name` (containers, ports, ...) merge by name
/// instead of being replaced.
pub fn strategic(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else if let Some(existing) = t.get_mut(k) {
                    strategic(existing, v);
                } else {
                    t.insert(k.clone(), v.clone());
                }
            }
        }
        (Value::Array(t), Value::Array(p)) if keyed_by_name(t) && keyed_by_name(p) => {
            for item in p {
                let name = item.get("name");
                match t.iter_mut().find(|e| e.get("name") == name) {
                    Some(e) => strategic(e, item),
                    None => t.push(item.clone()),
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn keyed_by_name(items: &[Value]) -> bool {
    !items.is_empty()
        && items
            .iter()
            .all(|i| i.get("name").is_some_and(Value::is_string))
}

/// RFC 6902 JSON patch.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or("the JSON patch must be an array of operations")?;
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op.get("path").and_then(Value::as_str).unwrap_or("");
        match kind {
            "add" => add(target, path, value_of(op)?)?,
            "remove" => {
                remove(target, path)?;
            }
            "replace" => {
                remove(target, path)?;
                add(target, path, value_of(op)?)?;
            }
            "move" | "copy" => {
                let from = op.get("from").and_then(Value::as_str).unwrap_or("");
                let v = if kind == "move" {
                    remove(target, from)?
                } else {
                    target
                        .pointer(from)
                        .cloned()
                        .ok_or_else(|| format!("missing value at {from}"))?
                };
                add(target, path, v)?;
            }
            "test" => {
                if target.pointer(path) != Some(value_of(op)?).as_ref() {
                    return Err(format!("testing value {path} failed"));
                }
            }
            other => return Err(format!("unexpected kind: {other:?}")),
        }
    }
    Ok(())
}

fn value_of(op: &Value) -> Result<Value, String> {
    op.get("value")
        .cloned()
        .ok_or_else(|| "missing value".to_owned())
}

fn split(path: &str) -> Result<(String, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("invalid path {path:?}"))?;
    Ok((
        parent.to_owned(),
        last.replace("~1", "/").replace("~0", "~"),
    ))
}

fn add(target: &mut Value, path: &str, v: Value) -> Result<(), String> {
    if path.is_empty() {
        *target = v;
        return Ok(());
    }
    let (parent, last) = split(path)?;
    match target.pointer_mut(&parent) {
        Some(Value::Object(m)) => {
            m.insert(last, v);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| format!("invalid index {last:?}"))?
            };
            if i > a.len() {
                return Err(format!("index {i} out of bounds"));
            }
            a.insert(i, v);
            Ok(())
        }
        _ => Err(format!("doc is missing path: {path:?}")),
    }
}

fn remove(target: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split(path)?;
    match target.pointer_mut(&parent) {
        Some(Value::Object(m)) => m
            .remove(&last)
            .ok_or_else(|| format!("doc is missing path: {path:?}")),
        Some(Value::Array(a)) => {
            let i = last
                .parse::<usize>()
                .map_err(|_| format!("invalid index {last:?}"))?;
            if i >= a.len() {
                return Err(format!("index {i} out of bounds"));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!("doc is missing path: {path:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge(&mut t, &json!({"a": "z", "c": {"f": null}, "l": [3]}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
    }

    #[test]
    fn json_patch_operations() {
        let mut t = json!({"spec": {"a": [1, 2]}});
        json_patch(
            &mut t,
            &json!([
                {"op": "add", "path": "/spec/a/-", "value": 3},
                {"op": "replace", "path": "/spec/a/0", "value": 0},
                {"op": "add", "path": "/spec/b", "value": "x"},
                {"op": "test", "path": "/spec/b", "value": "x"},
                {"op": "remove", "path": "/spec/a/1"},
            ]),
        )
        .unwrap();
        assert_eq!(t, json!({"spec": {"a": [0, 3], "b": "x"}}));
        assert!(
            json_patch(
                &mut t,
                &json!([{"op": "test", "path": "/spec/b", "value": "y"}])
            )
            .is_err()
        );
    }

    #[test]
    fn strategic_merge_merges_named_lists() {
        let mut t = json!({"spec": {"ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]}});
        strategic(
            &mut t,
            &json!({"spec": {"ports": [{"name": "http", "port": 8080}]}}),
        );
        assert_eq!(t["spec"]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(t["spec"]["ports"][0]["port"], 8080);
    }
}
