//! Discovery documents, the OpenAPI v3 index kubectl reads to learn that the server does
//! field validation, and Table output for `kubectl get`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::resources::Resource;

/// Versions per group (core included as ""), each group's versions preferred first.
fn groups(resources: &BTreeMap<(String, String), Resource>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in resources.values() {
        let e = out.entry(r.group.clone()).or_default();
        for v in &r.versions {
            if !e.contains(v) {
                e.push(v.clone());
            }
        }
    }
    for v in out.values_mut() {
        v.sort_by_key(|x| crate::resources::version_rank(x));
    }
    out
}

fn gv(group: &str, version: &str) -> Value {
    json!({"groupVersion": format!("{group}/{version}"), "version": version})
}

fn group_doc(name: &str, versions: &[String]) -> Value {
    json!({
        "name": name,
        "versions": versions.iter().map(|v| gv(name, v)).collect::<Vec<_>>(),
        "preferredVersion": gv(name, &versions[0]),
    })
}

pub fn core_versions(addr: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}]})
}

pub fn group_list(resources: &BTreeMap<(String, String), Resource>) -> Value {
    let list: Vec<Value> = groups(resources)
        .iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, v)| group_doc(g, v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list})
}

pub fn group(resources: &BTreeMap<(String, String), Resource>, name: &str) -> Option<Value> {
    let g = groups(resources);
    let versions = g.get(name).filter(|_| !name.is_empty())?;
    let mut doc = group_doc(name, versions);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// The APIResourceList of `group/version`, `None` if nothing is served there.
pub fn resource_list(
    resources: &BTreeMap<(String, String), Resource>,
    group: &str,
    version: &str,
) -> Option<Value> {
    let mut list = Vec::new();
    for r in resources
        .values()
        .filter(|r| r.group == group && r.serves(version))
    {
        list.push(json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": VERBS, "shortNames": r.short_names,
            "categories": r.categories,
        }));
        if r.status {
            list.push(
                json!({"name": format!("{}/status", r.plural), "singularName": "",
                "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}),
            );
        }
    }
    if list.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": group_version, "resources": list}))
}

/// A hash that changes whenever the set of resources does (discovery caches key on it).
fn hash(resources: &BTreeMap<(String, String), Resource>) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for r in resources.values() {
        (&r.group, &r.plural, &r.versions, &r.kind).hash(&mut h);
    }
    format!("{:016X}", h.finish())
}

/// `/openapi/v3`: where each group version's document is.
pub fn openapi_root(resources: &BTreeMap<(String, String), Resource>) -> Value {
    let h = hash(resources);
    let mut paths = serde_json::Map::new();
    for (g, versions) in groups(resources) {
        for v in versions {
            let p = if g.is_empty() {
                format!("api/{v}")
            } else {
                format!("apis/{g}/{v}")
            };
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={h}")}),
            );
        }
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<gv>`: each resource's operations, each PATCH declaring the
/// `fieldValidation` parameter (kubectl then leaves validation to the server).
pub fn openapi_gv(
    resources: &BTreeMap<(String, String), Resource>,
    group: &str,
    version: &str,
) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    for r in resources
        .values()
        .filter(|r| r.group == group && r.serves(version))
    {
        let gvk = json!({"group": r.group, "version": version, "kind": r.kind});
        let params = json!([
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        ]);
        let op = |action: &str| {
            json!({"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk,
                "parameters": params, "responses": {"200": {"description": "OK"}}})
        };
        let base = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{prefix}/{}", r.plural)
        };
        paths.insert(base.clone(), json!({"get": op("list"), "post": op("post")}));
        paths.insert(
            format!("{base}/{{name}}"),
            json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}),
        );
        if r.status {
            paths.insert(
                format!("{base}/{{name}}/status"),
                json!({"get": op("get"), "put": op("put"), "patch": op("patch")}),
            );
        }
    }
    if paths.is_empty() {
        return None;
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths, "components": {"schemas": {}}}),
    )
}

/// Age as kubectl prints it.
fn human_age(created: &str) -> String {
    let Some(secs) = parse_rfc3339(created) else {
        return "<unknown>".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let s = (now - secs).max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp (`2026-12-01T14:39:04Z`).
fn parse_rfc3339(s: &str) -> Option<i64> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time
        .split(':')
        .map(|x| x.split('.').next()?.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// A column's cell: a simple `.a.b` JSON path; lists print as JSON.
fn cell(obj: &Value, path: &str, type_: &str) -> Value {
    let pointer = path.replace('.', "/");
    match obj.pointer(&pointer) {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(s)) if type_ == "date" => json!(human_age(s)),
        Some(Value::String(s)) => json!(s),
        Some(v) => json!(v.to_string()),
    }
}

/// A `meta.k8s.io/v1` Table of `objects`, as `kubectl get` asks for.
pub fn table(r: &Resource, objects: &[Value], rv: Option<u64>) -> Value {
    let mut columns = vec![json!({"name": "Name", "type": "string", "format": "name",
        "description": "Name must be unique within a namespace.", "priority": 0})];
    let custom_age = r
        .columns
        .iter()
        .any(|c| c.json_path == ".metadata.creationTimestamp");
    for c in &r.columns {
        columns.push(json!({"name": c.name, "type": c.type_, "format": "",
            "description": c.description, "priority": c.priority}));
    }
    if !custom_age {
        columns.push(json!({"name": "Age", "type": "date", "format": "",
            "description": "CreationTimestamp is a timestamp representing the server time when this object was created.",
            "priority": 0}));
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut cells = vec![o.pointer("/metadata/name").cloned().unwrap_or(Value::Null)];
            for c in &r.columns {
                cells.push(cell(o, &c.json_path, &c.type_));
            }
            if !custom_age {
                cells.push(cell(o, ".metadata.creationTimestamp", "date"));
            }
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or_default()}})
        })
        .collect();
    let mut t = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {},
        "columnDefinitions": columns, "rows": rows});
    if let Some(rv) = rv {
        t["metadata"]["resourceVersion"] = json!(rv.to_string());
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_709_251_199);
        assert_eq!(
            parse_rfc3339(&cedille_common::rfc3339(t)),
            Some(1_709_251_199)
        );
    }
}
