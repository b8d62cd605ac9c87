//! L4 authorization: `AuthorizationPolicy` (`cedille.io/v1alpha1`) objects and their
//! evaluation for a connection arriving at an enrolled pod.
//!
//! ```yaml
//! apiVersion: cedille.io/v1alpha1
//! kind: AuthorizationPolicy
//! metadata: {name: only-web, namespace: shop}
//! spec:
//!   selector: {matchLabels: {app: db}}    # pods of this namespace; absent: all of them
//!   action: Allow                         # or Deny
//!   rules:                                # a connection matches if any rule matches
//!   - from:                               # any of these sources (absent: any source)
//!     - identities: ["spiffe://cluster.local/ns/shop/sa/web", "spiffe://cluster.local/ns/ops/sa/*"]
//!       namespaces: ["shop"]              # all given fields of one source must match
//!     ports: [5432]                       # destination ports (absent: any port)
//! ```
//! Deny wins over allow. A pod that no policy selects accepts every connection; a pod that
//! some Allow policy selects accepts only connections one of them matches. `rules: []`
//! matches nothing, `rules: [{}]` everything. A plaintext client (no identity) matches only
//! sources without `identities` and `namespaces`.

use std::collections::BTreeMap;

use cedille_objects::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::identity::{SpiffeId, valid_td};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    pub metadata: ObjectMeta,
    pub spec: PolicySpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    pub action: Action,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<PeerSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerSource {
    /// Exact SPIFFE IDs, or `spiffe://<td>/ns/<namespace>/sa/*` for a whole namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// Namespaces of the source identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// Checks what serde cannot: identity patterns and ports. Returns (field, message).
pub fn validate(p: &AuthorizationPolicy) -> Result<(), (String, String)> {
    for (i, r) in p.spec.rules.iter().enumerate() {
        for (j, s) in r.from.iter().enumerate() {
            for (k, id) in s.identities.iter().enumerate() {
                if let Err(e) = IdPattern::parse(id) {
                    return Err((format!("spec.rules[{i}].from[{j}].identities[{k}]"), e));
                }
            }
            for (k, ns) in s.namespaces.iter().enumerate() {
                if ns.is_empty() {
                    return Err((
                        format!("spec.rules[{i}].from[{j}].namespaces[{k}]"),
                        "empty namespace".into(),
                    ));
                }
            }
        }
        for (j, port) in r.ports.iter().enumerate() {
            if *port == 0 {
                return Err((
                    format!("spec.rules[{i}].ports[{j}]"),
                    "ports are 1-65535".into(),
                ));
            }
        }
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum IdPattern {
    Exact(SpiffeId),
    Namespace {
        trust_domain: String,
        namespace: String,
    },
}

impl IdPattern {
    fn parse(s: &str) -> Result<Self, String> {
        if let Some(prefix) = s.strip_suffix("/sa/*") {
            let rest = prefix.strip_prefix("spiffe://").unwrap_or("");
            if let Some((td, ns)) = rest.split_once("/ns/")
                && valid_td(td)
                && !ns.is_empty()
                && !ns.contains('/')
            {
                return Ok(IdPattern::Namespace {
                    trust_domain: td.to_owned(),
                    namespace: ns.to_owned(),
                });
            }
            return Err(format!(
                "{s:?}: a namespace-wide identity is spiffe://<trust-domain>/ns/<namespace>/sa/*"
            ));
        }
        SpiffeId::parse(s).map(IdPattern::Exact)
    }

    fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            IdPattern::Exact(e) => e == id,
            IdPattern::Namespace {
                trust_domain,
                namespace,
            } => &id.trust_domain == trust_domain && &id.namespace == namespace,
        }
    }
}

/// One policy, ready to evaluate.
#[derive(Clone, Debug, PartialEq)]
struct Compiled {
    /// `namespace/name`.
    name: String,
    selector: Option<BTreeMap<String, String>>,
    action: Action,
    rules: Vec<CompiledRule>,
}

#[derive(Clone, Debug, PartialEq)]
struct CompiledRule {
    from: Vec<(Vec<IdPattern>, Vec<String>)>,
    ports: Vec<u16>,
}

/// Every policy, by namespace: an immutable snapshot the connection path reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policies {
    by_namespace: BTreeMap<String, Vec<Compiled>>,
}

/// The connection being authorized.
pub struct Request<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub port: u16,
    /// The client's verified identity; `None` for plaintext.
    pub source: Option<&'a SpiffeId>,
}

impl Policies {
    pub fn new<'a>(policies: impl IntoIterator<Item = &'a AuthorizationPolicy>) -> Self {
        let mut by_namespace: BTreeMap<String, Vec<Compiled>> = BTreeMap::new();
        for p in policies {
            let ns = p.metadata.ns().to_owned();
            let rules = p
                .spec
                .rules
                .iter()
                .map(|r| CompiledRule {
                    from: r
                        .from
                        .iter()
                        .map(|s| {
                            (
                                s.identities
                                    .iter()
                                    .filter_map(|i| IdPattern::parse(i).ok())
                                    .collect(),
                                s.namespaces.clone(),
                            )
                        })
                        .collect(),
                    ports: r.ports.clone(),
                })
                .collect();
            by_namespace.entry(ns.clone()).or_default().push(Compiled {
                name: format!("{ns}/{}", p.metadata.name),
                selector: p.spec.selector.as_ref().map(|s| s.match_labels.clone()),
                action: p.spec.action,
                rules,
            });
        }
        for v in by_namespace.values_mut() {
            v.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Self { by_namespace }
    }

    /// `Ok` to admit; `Err(policy)` names what refused (the metric's label).
    pub fn check(&self, r: &Request<'_>) -> Result<(), String> {
        let Some(all) = self.by_namespace.get(r.namespace) else {
            return Ok(());
        };
        let selected = all.iter().filter(|p| {
            p.selector
                .as_ref()
                .is_none_or(|sel| sel.iter().all(|(k, v)| r.labels.get(k) == Some(v)))
        });
        let mut any_allow = false;
        let mut allowed = false;
        for p in selected {
            let hit = p.rules.iter().any(|rule| rule_matches(rule, r));
            match p.action {
                Action::Deny if hit => return Err(p.name.clone()),
                Action::Deny => {}
                Action::Allow => {
                    any_allow = true;
                    allowed |= hit;
                }
            }
        }
        if any_allow && !allowed {
            return Err(format!("{}/(no allow policy matched)", r.namespace));
        }
        Ok(())
    }
}

fn rule_matches(rule: &CompiledRule, r: &Request<'_>) -> bool {
    if !rule.ports.is_empty() && !rule.ports.contains(&r.port) {
        return false;
    }
    if rule.from.is_empty() {
        return true;
    }
    rule.from.iter().any(|(ids, namespaces)| {
        if ids.is_empty() && namespaces.is_empty() {
            return true;
        }
        let Some(src) = r.source else {
            return false;
        };
        (ids.is_empty() || ids.iter().any(|p| p.matches(src)))
            && (namespaces.is_empty() || namespaces.iter().any(|n| n == &src.namespace))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(yaml: &str) -> Policies {
        let docs: Vec<AuthorizationPolicy> = yaml
            .split("---\n")
            .map(|d| {
                let p: AuthorizationPolicy = serde_yaml_ng::from_str(d).unwrap();
                validate(&p).unwrap();
                p
            })
            .collect();
        Policies::new(&docs)
    }

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", ns, sa)
    }

    fn check(
        p: &Policies,
        labels: &[(&str, &str)],
        port: u16,
        src: Option<&SpiffeId>,
    ) -> Result<(), String> {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        p.check(&Request {
            namespace: "shop",
            labels: &labels,
            port,
            source: src,
        })
    }

    #[test]
    fn no_policy_allows_and_deny_wins_over_allow() {
        let none = Policies::default();
        assert!(check(&none, &[], 80, None).is_ok());
        let p = policies(
            "metadata: {name: web-in, namespace: shop}\nspec: {action: Allow, rules: [{from: [{namespaces: [shop]}]}]}\n---\nmetadata: {name: no-admin, namespace: shop}\nspec: {action: Deny, rules: [{from: [{identities: [\"spiffe://cluster.local/ns/shop/sa/admin\"]}]}]}\n",
        );
        assert!(check(&p, &[], 80, Some(&id("shop", "web"))).is_ok());
        assert_eq!(
            check(&p, &[], 80, Some(&id("shop", "admin"))),
            Err("shop/no-admin".into())
        );
        assert_eq!(
            check(&p, &[], 80, Some(&id("other", "web"))),
            Err("shop/(no allow policy matched)".into())
        );
        // Plaintext matches no source with identities or namespaces.
        assert!(check(&p, &[], 80, None).is_err());
    }

    #[test]
    fn selectors_ports_and_namespace_wide_identities() {
        let p = policies(
            "metadata: {name: db, namespace: shop}\nspec:\n  selector: {matchLabels: {app: db}}\n  action: Allow\n  rules: [{from: [{identities: [\"spiffe://cluster.local/ns/ops/sa/*\"]}], ports: [5432]}]\n",
        );
        let ops = id("ops", "backup");
        assert!(check(&p, &[("app", "db")], 5432, Some(&ops)).is_ok());
        assert!(check(&p, &[("app", "db")], 22, Some(&ops)).is_err());
        assert!(check(&p, &[("app", "db")], 5432, Some(&id("shop", "x"))).is_err());
        // Another pod of the namespace is not selected: no policy applies.
        assert!(check(&p, &[("app", "web")], 22, None).is_ok());
    }

    #[test]
    fn empty_rules_match_nothing_and_an_empty_rule_everything() {
        let p = policies(
            "metadata: {name: closed, namespace: shop}\nspec: {action: Allow, rules: []}\n",
        );
        assert!(check(&p, &[], 80, Some(&id("shop", "web"))).is_err());
        let p =
            policies("metadata: {name: all, namespace: shop}\nspec: {action: Deny, rules: [{}]}\n");
        assert_eq!(check(&p, &[], 80, None), Err("shop/all".into()));
    }

    #[test]
    fn bad_policies_name_the_field() {
        for (yaml, field) in [
            (
                "metadata: {name: x, namespace: shop}\nspec: {action: Allow, rules: [{from: [{identities: [\"spiffe://cluster.local/ns/a\"]}]}]}\n",
                "spec.rules[0].from[0].identities[0]",
            ),
            (
                "metadata: {name: x, namespace: shop}\nspec: {action: Allow, rules: [{ports: [0]}]}\n",
                "spec.rules[0].ports[0]",
            ),
        ] {
            let p: AuthorizationPolicy = serde_yaml_ng::from_str(yaml).unwrap();
            assert_eq!(validate(&p).unwrap_err().0, field);
        }
    }
}
