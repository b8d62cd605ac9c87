//! What a binary reads: its kinds, where the API serves them, and how a raw object becomes a
//! typed one. The store and both sources are generic over a [`Catalog`], so the gateway and
//! the agent share them while each keeps its own set of kinds.

use std::{fmt, hash::Hash};

use serde_json::Value;

use crate::meta::ObjectMeta;

/// Where the API serves a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindInfo {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// Versions this binary can read, preferred first. Discovery picks the first one the
    /// cluster serves.
    pub versions: &'static [&'static str],
    pub kind: &'static str,
    /// Resource name in URLs (`httproutes`).
    pub plural: &'static str,
    pub namespaced: bool,
    /// Whether the binary writes this kind's status (the store then keeps the status it
    /// reads from the API beside the object, for comparison).
    pub keeps_status: bool,
}

impl KindInfo {
    /// `group/version` (or `version` for the core group).
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    /// A kube-rs resource description for `version`.
    pub fn api_resource(&self, version: &str) -> kube::discovery::ApiResource {
        kube::discovery::ApiResource {
            group: self.group.to_owned(),
            version: version.to_owned(),
            api_version: self.api_version(version),
            kind: self.kind.to_owned(),
            plural: self.plural.to_owned(),
        }
    }
}

/// A binary's set of kinds, as one enum of typed objects.
pub trait Catalog: Sized + Clone + PartialEq + fmt::Debug + Send + Sync + 'static {
    type Kind: Copy
        + Ord
        + Hash
        + fmt::Debug
        + fmt::Display
        + serde::Serialize
        + Send
        + Sync
        + 'static;

    /// Every kind, in the order the binary wants them watched.
    fn kinds() -> &'static [Self::Kind];
    fn info(kind: Self::Kind) -> &'static KindInfo;
    /// The typed object from its JSON (deserialised and validated as the API server would):
    /// `Err((field path, message))` names what is wrong.
    fn decode(kind: Self::Kind, value: Value) -> Result<Self, (String, String)>;
    fn kind(&self) -> Self::Kind;
    fn meta(&self) -> &ObjectMeta;
    fn meta_mut(&mut self) -> &mut ObjectMeta;
    /// The part of the object whose change bumps `metadata.generation` (the spec, or the
    /// data for kinds without one), serialised for comparison.
    fn spec_fingerprint(&self) -> String;

    /// The kind for a manifest's `apiVersion` and `kind`; any version of the group.
    fn kind_of(api_version: &str, kind: &str) -> Option<Self::Kind> {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        Self::kinds().iter().copied().find(|k| {
            let i = Self::info(*k);
            i.group == group && i.kind == kind
        })
    }
}
