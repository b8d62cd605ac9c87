//! The gateway's object store: `cedille-objects`' store over the gateway's kinds. Both
//! sources (manifest directory, Kubernetes watch) fill it; translation reads it.

use crate::model::Object;

pub use cedille_objects::rfc3339;

pub type Store = cedille_objects::Store<Object>;
pub type Stored = cedille_objects::Stored<Object>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        manifest::parse,
        model::{Kind, ObjKey},
    };
    use std::path::Path;

    fn route(path: &str) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: ns}}\nspec:\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n"
        )
    }

    #[test]
    fn an_invalid_route_keeps_its_last_good_version() {
        let mut s = Store::new();
        s.apply_source("a", parse(Path::new("a"), &route("/a")));
        let changed = s.apply_source("a", parse(Path::new("a"), &route("no-slash")));
        assert!(changed.is_empty());
        assert!(s.get(&ObjKey::new(Kind::HttpRoute, "ns", "r")).is_some());
        assert_eq!(
            s.errors()[0].field.as_deref(),
            Some("spec.rules[0].matches[0].path.value")
        );
    }
}
