//! The upstream conformance data (shared/conformance) and our expectations file.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

pub struct TestInfo {
    pub name: String,
    pub manifests: Vec<String>,
    /// `core` or `extended` in the GATEWAY-HTTP profile.
    pub profile: String,
}

pub struct Suite {
    pub root: PathBuf,
    pub tests: Vec<TestInfo>,
    /// `(test name, fully resolved, case)` in cases.json order.
    pub cases: Vec<(String, bool, Value)>,
    pub expectations: Value,
    pub base: Vec<Value>,
}

/// Finds `shared/conformance/gateway-api-*` next to the checkout.
pub fn locate(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    let shared = crate::util::root().join("../shared/conformance");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&shared)
        .with_context(|| {
            format!(
                "reading {} (the conformance data sits beside the checkout)",
                shared.display()
            )
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("gateway-api-"))
        })
        .collect();
    found.sort();
    found
        .pop()
        .context("no gateway-api-* directory in shared/conformance")
}

pub fn yaml_docs(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    yaml_docs_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub fn yaml_docs_str(text: &str) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for de in serde_yaml_ng::Deserializer::from_str(text) {
        let v = Value::deserialize(de)?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

impl Suite {
    pub fn load(root: &Path) -> anyhow::Result<Self> {
        let inventory: Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("inventory.json"))?)?;
        let mut tests = Vec::new();
        for t in inventory
            .as_array()
            .context("inventory.json is not a list")?
        {
            let name = t["name"].as_str().context("test without name")?.to_owned();
            let profile = t["profiles"]["GATEWAY-HTTP"]
                .as_str()
                .unwrap_or("extended")
                .to_owned();
            let manifests = t["manifests"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|m| m.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            tests.push(TestInfo {
                name,
                manifests,
                profile,
            });
        }
        let cases_json: Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("cases.json"))?)?;
        let cases = cases_json
            .as_array()
            .context("cases.json is not a list")?
            .iter()
            .map(|c| {
                (
                    c["test"].as_str().unwrap_or("").to_owned(),
                    c["fully_resolved"].as_bool().unwrap_or(false),
                    c["case"].clone(),
                )
            })
            .collect();
        let exp_path = crate::util::root().join("xtask/conformance/expectations.yaml");
        let exp_docs = yaml_docs(&exp_path)?;
        let Some(expectations) = exp_docs.into_iter().next() else {
            bail!("{} is empty", exp_path.display());
        };
        Ok(Self {
            root: root.to_owned(),
            tests,
            cases,
            expectations,
            base: yaml_docs(&root.join("base-manifests.yaml"))?,
        })
    }

    pub fn cases_of(&self, test: &str) -> Vec<(bool, &Value)> {
        self.cases
            .iter()
            .filter(|(t, _, _)| t == test)
            .map(|(_, r, c)| (*r, c))
            .collect()
    }

    pub fn manifests_of(&self, t: &TestInfo) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        for m in &t.manifests {
            out.extend(yaml_docs(&self.root.join(m))?);
        }
        Ok(out)
    }
}
