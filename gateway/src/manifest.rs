//! Parsing manifest files into objects. Every error names the file, the document, the
//! object (when it got that far) and the field, so an operator can fix it without guessing.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::{
    model::{Kind, Object, core, gwapi},
    validate,
};

pub use cedille_common::ManifestError;

/// The outcome of parsing one file.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Objects that parsed and validated, in file order.
    pub objects: Vec<Object>,
    /// Documents that did not; `key` is set when the object's identity could be read, so the
    /// store can keep that object's last good version.
    pub errors: Vec<(Option<crate::model::ObjKey>, ManifestError)>,
    /// The file as a whole could not be read as YAML: nothing in it is trustworthy.
    pub unreadable: bool,
}

pub fn parse(file: &Path, text: &str) -> Parsed {
    let file_s = file.display().to_string();
    let mut out = Parsed::default();
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(de) {
            Ok(v) => docs.push((i + 1, v)),
            Err(e) => {
                out.unreadable = true;
                out.errors.push((
                    None,
                    ManifestError {
                        file: file_s.clone(),
                        document: i + 1,
                        object: None,
                        field: None,
                        message: format!("invalid YAML: {e}"),
                    },
                ));
                return out;
            }
        }
    }
    for (doc, value) in docs {
        if value.is_null() {
            continue;
        }
        // `kind: List` (kubectl output) holds objects in `items`.
        if value.get("kind").and_then(Value::as_str) == Some("List") {
            let items = value
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for item in items {
                push(&mut out, parse_object(&file_s, doc, item));
            }
        } else {
            push(&mut out, parse_object(&file_s, doc, value));
        }
    }
    out
}

fn push(out: &mut Parsed, r: DocResult) {
    match r {
        Ok(Some(o)) => out.objects.push(o),
        Ok(None) => {}
        Err(e) => out.errors.push(*e),
    }
}

type DocResult = Result<Option<Object>, Box<(Option<crate::model::ObjKey>, ManifestError)>>;

/// Parses one object. Kinds the gateway does not read (Deployments in a shared manifest,
/// say) are skipped, not errors.
fn parse_object(file: &str, document: usize, mut value: Value) -> DocResult {
    let err = |object: Option<String>, field: Option<String>, message: String| ManifestError {
        file: file.to_owned(),
        document,
        object,
        field,
        message,
    };
    let Some(map) = value.as_object_mut() else {
        return Err(Box::new((
            None,
            err(None, None, "a manifest document must be a mapping".into()),
        )));
    };
    let api_version = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let kind_s = map
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if api_version.is_empty() || kind_s.is_empty() {
        return Err(Box::new((
            None,
            err(
                None,
                Some(
                    if api_version.is_empty() {
                        "apiVersion"
                    } else {
                        "kind"
                    }
                    .into(),
                ),
                "missing".into(),
            ),
        )));
    }
    let Some(kind) = Kind::from_manifest(&api_version, &kind_s) else {
        return Ok(None);
    };
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if name.is_empty() {
        return Err(Box::new((
            None,
            err(Some(kind_s), Some("metadata.name".into()), "missing".into()),
        )));
    }
    let namespace = if kind.cluster_scoped() {
        None
    } else {
        let ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_owned();
        if let Some(m) = meta.as_object_mut() {
            m.insert("namespace".into(), Value::String(ns.clone()));
        }
        Some(ns)
    };
    // Generation belongs to the store, whatever the file says.
    if let Some(m) = meta.as_object_mut() {
        m.remove("generation");
    }
    let key = crate::model::ObjKey::new(kind, namespace.as_deref().unwrap_or(""), &name);
    let label = key.to_string();
    let typed = match kind {
        Kind::GatewayClass => typed::<gwapi::GatewayClass>(value).map(Object::GatewayClass),
        Kind::Gateway => typed::<gwapi::Gateway>(value).map(|g| Object::Gateway(Box::new(g))),
        Kind::HttpRoute => typed::<gwapi::HttpRoute>(value).map(Object::HttpRoute),
        Kind::ReferenceGrant => typed::<gwapi::ReferenceGrant>(value).map(Object::ReferenceGrant),
        Kind::ListenerSet => typed::<gwapi::ListenerSet>(value).map(Object::ListenerSet),
        Kind::BackendTlsPolicy => {
            typed::<gwapi::BackendTlsPolicy>(value).map(Object::BackendTlsPolicy)
        }

        Kind::Secret => typed::<core::Secret>(value).map(Object::Secret),
        Kind::ConfigMap => typed::<core::ConfigMap>(value).map(Object::ConfigMap),
        Kind::Service => typed::<core::Service>(value).map(Object::Service),
        Kind::EndpointSlice => typed::<core::EndpointSlice>(value).map(Object::EndpointSlice),
        Kind::Namespace => typed::<core::Namespace>(value).map(Object::Namespace),
    };
    let object = typed.map_err(|(field, message)| {
        Box::new((
            Some(key.clone()),
            err(Some(label.clone()), Some(field), message),
        ))
    })?;
    if let Some((field, message)) = validate::object(&object).into_iter().next() {
        return Err(Box::new((
            Some(key),
            err(Some(label), Some(field), message),
        )));
    }
    Ok(Some(object))
}

fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        (path, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: cedille
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
apiVersion: v1
kind: Service
metadata: {name: svc}
spec: {ports: [{port: 8080}]}
"#;

    #[test]
    fn documents_parse_and_foreign_kinds_are_skipped() {
        let p = parse(Path::new("a.yaml"), GOOD);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.objects.len(), 2);
        // The namespace defaults like kubectl's.
        assert_eq!(p.objects[1].meta().ns(), "default");
    }

    #[test]
    fn a_wrong_type_names_file_object_and_field() {
        let text = GOOD.replace("port: 80,", "port: eighty,");
        let p = parse(Path::new("a.yaml"), &text);
        assert_eq!(p.objects.len(), 1, "the Service still loads");
        let (key, e) = &p.errors[0];
        assert_eq!(key.as_ref().unwrap().name, "gw");
        assert_eq!(e.document, 1);
        assert_eq!(e.field.as_deref(), Some("spec.listeners[0].port"));
        let shown = e.to_string();
        assert!(
            shown.starts_with("a.yaml document 1: Gateway infra/gw: field spec.listeners[0].port:"),
            "{shown}"
        );
    }

    #[test]
    fn broken_yaml_makes_the_file_unreadable() {
        let p = parse(Path::new("b.yaml"), "kind: [unclosed");
        assert!(p.unreadable);
        assert!(p.errors[0].1.message.contains("invalid YAML"));
    }

    #[test]
    fn missing_name_is_reported() {
        let p = parse(
            Path::new("c.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {}\n",
        );
        assert_eq!(p.errors[0].1.field.as_deref(), Some("metadata.name"));
    }
}
