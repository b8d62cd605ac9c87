//! Status in the shape the Kubernetes API has it, as the gateway would write it back.

use std::{collections::BTreeMap, sync::Arc};

use serde::Serialize;

use crate::{manifest::ManifestError, model::gwapi::ParentReference, store::Stored};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
    pub observed_generation: i64,
    /// Shared by every condition that changed in one translation.
    pub last_transition_time: Arc<str>,
}

/// Builds a condition list; `finish` stamps observedGeneration and keeps lastTransitionTime
/// from the previous status when type and status did not change.
#[derive(Default)]
pub struct Conditions(Vec<(&'static str, bool, &'static str, String)>);

impl Conditions {
    /// Types and reasons are the spec's words, so they are static; messages are not.
    pub fn set(
        &mut self,
        type_: &'static str,
        ok: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) {
        let message = message.into();
        if let Some(c) = self.0.iter_mut().find(|c| c.0 == type_) {
            *c = (type_, ok, reason, message);
        } else {
            self.0.push((type_, ok, reason, message));
        }
    }

    /// `finish` without consuming: the same conditions written on several entries.
    pub fn clone_for(
        &self,
        generation: i64,
        prev: Option<&[Condition]>,
        now: &Arc<str>,
    ) -> Vec<Condition> {
        Conditions(self.0.clone()).finish(generation, prev, now)
    }

    pub fn get(&self, type_: &str) -> Option<bool> {
        self.0.iter().find(|c| c.0 == type_).map(|c| c.1)
    }

    pub fn finish(
        self,
        generation: i64,
        prev: Option<&[Condition]>,
        now: &Arc<str>,
    ) -> Vec<Condition> {
        self.0
            .into_iter()
            .map(|(type_, ok, reason, message)| {
                let status = if ok { "True" } else { "False" };
                let last = prev
                    .and_then(|p| p.iter().find(|c| c.type_ == type_ && c.status == status))
                    .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
                Condition {
                    type_,
                    status,
                    reason,
                    message,
                    observed_generation: generation,
                    last_transition_time: last,
                }
            })
            .collect()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassStatus {
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayStatusAddress>,
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerStatus>,
    /// ListenerSets attached to (accepted by) this Gateway.
    pub attached_listener_sets: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerSetStatus {
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GatewayStatusAddress {
    #[serde(rename = "type")]
    pub type_: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    pub name: String,
    pub supported_kinds: Vec<SupportedKind>,
    pub attached_routes: i32,
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SupportedKind {
    pub group: String,
    pub kind: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// Shared by every route status with the same parents and conditions: most routes of
    /// a cluster have one parent, accepted with their references resolved. A thin
    /// pointer: every route's status entry is a size class smaller.
    pub parents: Arc<Box<[RouteParentStatus]>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// Shared by every route status naming the same parent.
    pub parent_ref: Arc<ParentReference>,
    pub controller_name: &'static str,
    /// Shared by every route status with the same conditions: most routes of a cluster
    /// are accepted with their references resolved, in the same translation.
    pub conditions: Arc<[Condition]>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    pub ancestors: Vec<PolicyAncestorStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAncestorStatus {
    pub ancestor_ref: ParentReference,
    pub controller_name: &'static str,
    pub conditions: Vec<Condition>,
}

/// One object's status with the identity and generation it describes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry<S> {
    /// Empty for cluster-scoped kinds.
    #[serde(skip_serializing_if = "str_is_empty")]
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub generation: i64,
    pub status: S,
}

/// A route's status with the route it describes. The namespace, name and generation are
/// read from the route's record, which the translation cache holds anyway: thousands of
/// routes, and an entry each in every report. Written like [`Entry`].
#[derive(Clone)]
pub struct RouteStatusEntry {
    route: Arc<Stored>,
    pub status: RouteStatus,
}

impl RouteStatusEntry {
    /// `route` must be an HTTPRoute's record.
    pub fn new(route: Arc<Stored>, status: RouteStatus) -> Self {
        RouteStatusEntry { route, status }
    }
    pub fn namespace(&self) -> &str {
        self.key().0
    }
    pub fn name(&self) -> &str {
        self.key().1
    }
    pub fn generation(&self) -> i64 {
        self.route.object.meta().generation
    }
    fn key(&self) -> (&str, &str) {
        self.route.name_key()
    }
}

impl PartialEq for RouteStatusEntry {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
            && self.generation() == other.generation()
            && self.status == other.status
    }
}

impl std::fmt::Debug for RouteStatusEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteStatusEntry")
            .field("namespace", &self.namespace())
            .field("name", &self.name())
            .field("generation", &self.generation())
            .field("status", &self.status)
            .finish()
    }
}

impl Serialize for RouteStatusEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Entry", 4)?;
        if self.namespace().is_empty() {
            st.skip_field("namespace")?;
        } else {
            st.serialize_field("namespace", self.namespace())?;
        }
        st.serialize_field("name", self.name())?;
        st.serialize_field("generation", &self.generation())?;
        st.serialize_field("status", &self.status)?;
        st.end()
    }
}

/// The statuses of the routes, in namespace and name order; written as a map keyed by
/// `namespace/name`, like the other kinds. A list, not a map with a key string per route:
/// thousands of routes, and a report per translation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteStatuses(Vec<RouteStatusEntry>);

impl RouteStatuses {
    /// `entries` must be in (namespace, name) order.
    pub fn from_sorted(entries: Vec<RouteStatusEntry>) -> Self {
        debug_assert!(entries.windows(2).all(|w| w[0].key() < w[1].key()));
        RouteStatuses(entries)
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&RouteStatusEntry> {
        self.0
            .binary_search_by(|e| e.key().cmp(&(namespace, name)))
            .ok()
            .map(|i| &self.0[i])
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for RouteStatuses {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(
            self.0
                .iter()
                .map(|e| (format!("{}/{}", e.namespace(), e.name()), e)),
        )
    }
}

fn str_is_empty(s: &Arc<str>) -> bool {
    s.is_empty()
}

/// Everything `/status` serves. Keys are `namespace/name` (or `name` for cluster scope).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub gateway_classes: BTreeMap<String, Entry<GatewayClassStatus>>,
    pub gateways: BTreeMap<String, Entry<GatewayStatus>>,
    pub listener_sets: BTreeMap<String, Entry<ListenerSetStatus>>,
    #[serde(rename = "httpRoutes")]
    pub http_routes: RouteStatuses,
    #[serde(rename = "backendTLSPolicies")]
    pub backend_tls_policies: BTreeMap<String, Entry<PolicyStatus>>,
    /// Manifests that were rejected, with the reason (file, document, object, field).
    pub invalid_manifests: Vec<ManifestError>,
}
