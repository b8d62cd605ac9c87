//! Manifest files into the gateway's objects: the shared reader of `cedille-objects`, with
//! the gateway's kinds and validation.

use std::path::Path;

pub use cedille_common::ManifestError;

use crate::model::Object;

/// The outcome of parsing one file.
pub type Parsed = cedille_objects::Parsed<Object>;

pub fn parse(file: &Path, text: &str) -> Parsed {
    cedille_objects::manifest::parse(file, text)
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
    fn validation_rules_name_the_field() {
        let text = GOOD.replace("port: 80,", "port: 70000,");
        let p = parse(Path::new("a.yaml"), &text);
        assert_eq!(
            p.errors[0].1.field.as_deref(),
            Some("spec.listeners[0].port")
        );
        assert!(p.errors[0].1.message.contains("1-65535"), "{:?}", p.errors);
    }
}
