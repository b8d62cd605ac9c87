//! Object identity and metadata, shared by every kind.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

/// Identity of an object: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjKey<K> {
    pub kind: K,
    pub namespace: String,
    pub name: String,
}

impl<K> ObjKey<K> {
    pub fn new(kind: K, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl<K: fmt::Display> fmt::Display for ObjKey<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// The metadata Cedille reads. `resourceVersion` is deliberately absent: it changes on
/// every write (status included), and the store keeps it beside the object so that a
/// status write does not look like a new version of the object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// From the API server; for manifest files the store starts it at 1 and bumps it when
    /// the spec changes, as the API server would.
    #[serde(default)]
    pub generation: i64,
    /// RFC 3339. From the API server, or from the manifest, or set by the store when a
    /// manifest object first appears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

impl ObjectMeta {
    pub fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("")
    }
}

pub use cedille_common::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_display_like_kubectl_names() {
        assert_eq!(ObjKey::new("Pod", "shop", "a").to_string(), "Pod shop/a");
        assert_eq!(
            ObjKey::new("Namespace", "", "shop").to_string(),
            "Namespace shop"
        );
    }
}
