//! The resources the server serves: a few built-in kinds, and every kind a
//! CustomResourceDefinition adds (at startup from files, or created through the API).

use serde_json::{Value, json};

/// `(group, plural)`: a resource's identity, whatever version it is asked at.
pub type ResKey = (String, String);

#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: String,
    pub type_: String,
    pub json_path: String,
    pub description: String,
    pub priority: i64,
}

#[derive(Clone, Debug)]
pub struct Resource {
    pub group: String,
    /// Served versions, preferred first.
    pub versions: Vec<String>,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    /// Has a `/status` subresource: writes to the object ignore its status, and writes to
    /// `/status` ignore everything else.
    pub status: bool,
    /// `metadata.generation` is kept (bumped when anything but metadata and status changes).
    pub generation: bool,
    /// Defined by a CRD: no strategic merge patch, updates need a resourceVersion.
    pub custom: bool,
    /// Fields usable in a field selector besides `metadata.name` and `metadata.namespace`.
    pub fields: Vec<String>,
    pub columns: Vec<Column>,
}

impl Resource {
    pub fn key(&self) -> ResKey {
        (self.group.clone(), self.plural.clone())
    }

    /// `pods` for the core group, `httproutes.gateway.networking.k8s.io` otherwise: how
    /// error messages name the resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    pub fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }

    pub fn field_supported(&self, field: &str) -> bool {
        matches!(field, "metadata.name" | "metadata.namespace")
            || self.fields.iter().any(|f| f == field)
    }
}

fn builtin(
    group: &str,
    kind: &str,
    plural: &str,
    short: &[&str],
    namespaced: bool,
    status: bool,
    fields: &[&str],
) -> Resource {
    Resource {
        group: group.into(),
        versions: vec!["v1".into()],
        kind: kind.into(),
        list_kind: format!("{kind}List"),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        namespaced,
        status,
        generation: false,
        custom: false,
        fields: fields.iter().map(|s| s.to_string()).collect(),
        columns: Vec::new(),
    }
}

/// The built-in kinds: what Cedille reads, what leader election writes, and CRDs.
pub fn builtins() -> Vec<Resource> {
    let mut crd = builtin(
        "apiextensions.k8s.io",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        &["crd", "crds"],
        false,
        true,
        &[],
    );
    crd.generation = true;
    vec![
        builtin(
            "",
            "Namespace",
            "namespaces",
            &["ns"],
            false,
            true,
            &["status.phase"],
        ),
        builtin(
            "",
            "Pod",
            "pods",
            &["po"],
            true,
            true,
            &[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
        ),
        builtin("", "Service", "services", &["svc"], true, true, &[]),
        builtin("", "Secret", "secrets", &[], true, false, &["type"]),
        builtin("", "ConfigMap", "configmaps", &["cm"], true, false, &[]),
        builtin(
            "",
            "ServiceAccount",
            "serviceaccounts",
            &["sa"],
            true,
            false,
            &[],
        ),
        builtin(
            "discovery.k8s.io",
            "EndpointSlice",
            "endpointslices",
            &[],
            true,
            false,
            &[],
        ),
        builtin(
            "coordination.k8s.io",
            "Lease",
            "leases",
            &[],
            true,
            false,
            &[],
        ),
        crd,
        // What the Helm chart installs, served without further semantics.
        Resource {
            generation: true,
            ..builtin(
                "apps",
                "Deployment",
                "deployments",
                &["deploy"],
                true,
                true,
                &[],
            )
        },
        Resource {
            generation: true,
            ..builtin("apps", "DaemonSet", "daemonsets", &["ds"], true, true, &[])
        },
        builtin(
            "rbac.authorization.k8s.io",
            "ClusterRole",
            "clusterroles",
            &[],
            false,
            false,
            &[],
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "ClusterRoleBinding",
            "clusterrolebindings",
            &[],
            false,
            false,
            &[],
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "Role",
            "roles",
            &[],
            true,
            false,
            &[],
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "RoleBinding",
            "rolebindings",
            &[],
            true,
            false,
            &[],
        ),
        builtin(
            "policy",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            &["pdb"],
            true,
            true,
            &[],
        ),
        Resource {
            versions: vec!["v2".into()],
            ..builtin(
                "autoscaling",
                "HorizontalPodAutoscaler",
                "horizontalpodautoscalers",
                &["hpa"],
                true,
                true,
                &[],
            )
        },
    ]
}

/// Kubernetes' version priority: GA before beta before alpha, higher numbers first.
pub fn version_rank(v: &str) -> (u8, i64, i64) {
    let Some(rest) = v.strip_prefix('v') else {
        return (3, 0, 0);
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let major: i64 = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let (stage, num) = if tail.is_empty() {
        (0, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (1, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (2, n.parse().unwrap_or(0))
    } else {
        (3, 0)
    };
    (stage, -major, -num)
}

/// The resource a CustomResourceDefinition defines, or why it cannot be served.
pub fn from_crd(crd: &Value) -> Result<Resource, String> {
    let spec = crd.get("spec").ok_or("spec: Required value")?;
    let s = |p: &str| {
        spec.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let group = s("/group");
    let plural = s("/names/plural");
    let kind = s("/names/kind");
    if group.is_empty() || plural.is_empty() || kind.is_empty() {
        return Err("spec.group, spec.names.plural and spec.names.kind are required".into());
    }
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name != format!("{plural}.{group}") {
        return Err(format!(
            "metadata.name: Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"
        ));
    }
    let list = |p: &str| -> Vec<String> {
        spec.pointer(p)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut served: Vec<String> = versions
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(false))
        .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    served.sort_by_key(|v| version_rank(v));
    let storage = versions
        .iter()
        .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .or_else(|| versions.first());
    let status = storage
        .and_then(|v| v.pointer("/subresources/status"))
        .is_some();
    let columns = storage
        .and_then(|v| v.get("additionalPrinterColumns"))
        .and_then(Value::as_array)
        .map(|cols| {
            cols.iter()
                .map(|c| Column {
                    name: c.get("name").and_then(Value::as_str).unwrap_or("").into(),
                    type_: c
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("string")
                        .into(),
                    json_path: c
                        .get("jsonPath")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                    description: c
                        .get("description")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                    priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default();
    let fields = storage
        .and_then(|v| v.get("selectableFields"))
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(|x| x.get("jsonPath").and_then(Value::as_str))
                .map(|p| p.trim_start_matches('.').to_owned())
                .collect()
        })
        .unwrap_or_default();
    Ok(Resource {
        group,
        versions: served,
        list_kind: {
            let l = s("/names/listKind");
            if l.is_empty() {
                format!("{kind}List")
            } else {
                l
            }
        },
        singular: {
            let l = s("/names/singular");
            if l.is_empty() { kind.to_lowercase() } else { l }
        },
        kind,
        plural,
        short_names: list("/names/shortNames"),
        categories: list("/names/categories"),
        namespaced: s("/scope") != "Cluster",
        status,
        generation: true,
        custom: true,
        fields,
        columns,
    })
}

/// The status a CRD gets once served, as kube-apiserver's controllers write it.
pub fn crd_status(r: &Resource) -> Value {
    json!({
        "acceptedNames": {
            "kind": r.kind, "listKind": r.list_kind, "plural": r.plural,
            "singular": r.singular, "shortNames": r.short_names, "categories": r.categories,
        },
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found"},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted"},
        ],
        "storedVersions": [r.versions.first().cloned().unwrap_or_default()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_like_kubernetes() {
        let mut v = vec!["v1alpha2", "v1beta1", "v2", "v1", "v1beta2"];
        v.sort_by_key(|v| version_rank(v));
        assert_eq!(v, ["v2", "v1", "v1beta2", "v1beta1", "v1alpha2"]);
    }
}
