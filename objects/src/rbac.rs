//! The Kubernetes permissions a binary needs, derived from the kinds it watches and what it
//! writes: printed by `--print-permissions`, and compared with the Helm chart's RBAC in
//! the chart test, so the two cannot drift.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::catalog::KindInfo;

/// One RBAC rule, as a Role or ClusterRole writes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
}

/// What a binary needs: cluster-wide, and in its own namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Permissions {
    pub cluster: Vec<Rule>,
    pub namespace: Vec<Rule>,
}

/// Rules granting `verbs` on `resources` (group, resource), one rule per group.
pub fn rules<'a>(
    resources: impl IntoIterator<Item = (&'a str, String)>,
    verbs: &[&str],
) -> Vec<Rule> {
    let mut by_group: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (group, resource) in resources {
        let r = by_group.entry(group).or_default();
        if !r.contains(&resource) {
            r.push(resource);
        }
    }
    by_group
        .into_iter()
        .map(|(group, mut resources)| {
            resources.sort();
            Rule {
                api_groups: vec![group.to_owned()],
                resources,
                verbs: verbs.iter().map(|v| v.to_string()).collect(),
            }
        })
        .collect()
}

/// get/list/watch on each kind.
pub fn watching<'a>(kinds: impl IntoIterator<Item = &'a KindInfo>) -> Vec<Rule> {
    rules(
        kinds.into_iter().map(|k| (k.group, k.plural.to_owned())),
        &["get", "list", "watch"],
    )
}
