//! Which of a binary's kinds the cluster serves, and at which version: read once at start
//! from the API server's discovery documents, so that a cluster with older or missing CRDs
//! works for what it has.

use std::collections::{BTreeMap, HashMap};

use kube::Client;

use crate::catalog::Catalog;

/// The version served for each kind the cluster has (kinds it lacks are absent).
pub async fn served_versions<C: Catalog>(
    client: &Client,
) -> Result<BTreeMap<C::Kind, String>, kube::Error> {
    let groups = client.list_api_groups().await?;
    let mut resources: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut out = BTreeMap::new();
    for &kind in C::kinds() {
        let info = C::info(kind);
        for &version in info.versions {
            let gv = info.api_version(version);
            if !resources.contains_key(&gv) {
                let list = if info.group.is_empty() {
                    Some(client.list_core_api_resources(version).await?)
                } else {
                    let served = groups.groups.iter().any(|g| {
                        g.name == info.group && g.versions.iter().any(|v| v.version == version)
                    });
                    if served {
                        Some(client.list_api_group_resources(&gv).await?)
                    } else {
                        None
                    }
                };
                let names = list
                    .map(|l| {
                        l.resources
                            .into_iter()
                            .map(|r| (r.name, r.kind))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                resources.insert(gv.clone(), names);
            }
            if resources[&gv]
                .iter()
                .any(|(plural, k)| plural == info.plural && k == info.kind)
            {
                out.insert(kind, version.to_owned());
                break;
            }
        }
    }
    Ok(out)
}
