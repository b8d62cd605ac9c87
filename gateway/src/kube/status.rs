//! Writes the translated status back to the API server, through the `/status` subresource,
//! from the replica that holds the Lease only.
//!
//! - Gateways (of our classes), our GatewayClasses and ListenerSets: the whole status.
//! - HTTPRoutes and BackendTLSPolicies: only the `parents`/`ancestors` entries whose
//!   `controllerName` is ours; other controllers' entries are kept as read.
//! - Nothing is written when the server already holds what we would write, so the echo of
//!   our own write (a watch event) does not cause another write. Conditions keep the
//!   server's `lastTransitionTime` when their status did not change (a new leader does not
//!   rewrite every timestamp).
//! - Every write is a merge patch carrying the resourceVersion it was computed from; on
//!   409 Conflict the object is read again and the write recomputed.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use futures_util::{StreamExt, stream};
use kube::{
    Api, Client,
    api::{DynamicObject, Patch, PatchParams},
};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::lease::is_code;
use crate::{
    metrics::Metrics,
    model::{CONTROLLER_NAME, Kind, ObjKey},
    translate::StatusReport,
};

/// What the server holds for one object, as last seen by the watch.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub status: Option<Arc<Value>>,
    pub resource_version: Option<String>,
}

/// One round of work: the status to write and what the server holds.
pub struct Job {
    pub report: Arc<StatusReport>,
    pub observed: BTreeMap<ObjKey, Observed>,
}

/// Largest number of status writes in flight at once.
const CONCURRENCY: usize = 16;
/// Re-reads after a 409 before giving up until the next round.
const CONFLICT_RETRIES: usize = 5;

pub struct Writer {
    client: Client,
    versions: BTreeMap<Kind, String>,
    metrics: Arc<Metrics>,
    /// Per object, what we last wrote.
    written: HashMap<ObjKey, Written>,
}

/// A successful write: what we wanted, what the server answered with (it may prune fields),
/// and the resourceVersion the write replaced (while the watch still shows that version,
/// it has not caught up with our write yet).
struct Written {
    desired: Value,
    echo: Value,
    replaced: Option<String>,
}

/// A write to do: the object, the status we want, and whether we own the whole status
/// (else only the `parents` or `ancestors` entries of our controller).
struct Want {
    key: ObjKey,
    ours: Value,
}

impl Writer {
    pub fn new(client: Client, versions: BTreeMap<Kind, String>, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            versions,
            metrics,
            written: HashMap::new(),
        }
    }

    /// Writes whenever a new job arrives or leadership is gained, while leading; retries
    /// failed writes with backoff.
    pub async fn run(
        mut self,
        mut jobs: watch::Receiver<Option<Arc<Job>>>,
        mut leader: watch::Receiver<bool>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(500);
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let retry = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = jobs.changed() => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
                _ = retry => {}
                _ = stop.changed() => return,
            }
            retry_at = None;
            if !*leader.borrow() {
                // A new leader starts from what the server holds.
                self.written.clear();
                continue;
            }
            let Some(job) = jobs.borrow_and_update().clone() else {
                continue;
            };
            let failures = self.write_all(&job, &leader).await;
            if failures > 0 {
                warn!(failures, retry_in = ?backoff, "some status writes failed; retrying");
                retry_at = Some(tokio::time::Instant::now() + backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            } else {
                backoff = Duration::from_millis(500);
            }
        }
    }

    /// Writes what differs; returns how many writes failed.
    async fn write_all(&mut self, job: &Job, leader: &watch::Receiver<bool>) -> usize {
        let wants = wants(job);
        let mut todo = Vec::new();
        for w in wants {
            let observed = job.observed.get(&w.key).cloned().unwrap_or_default();
            let server = observed.status.as_deref().cloned().unwrap_or(Value::Null);
            let desired = desired(w.key.kind, &w.ours, &server);
            let done = self.written.get(&w.key).is_some_and(|d| {
                d.desired == desired
                    && (d.echo == server
                        || (d.replaced.is_some() && d.replaced == observed.resource_version))
            });
            if desired == server || done {
                continue;
            }
            todo.push((w, observed));
        }
        if todo.is_empty() {
            return 0;
        }
        debug!(writes = todo.len(), "writing status");
        let this = &*self;
        let results: Vec<_> = stream::iter(todo)
            .map(|(w, observed)| async move {
                let r = this.write_one(&w, observed, leader).await;
                (w.key, r)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut failures = 0;
        for (key, r) in results {
            let kind = key.kind.as_str();
            match r {
                Ok(Some(done)) => {
                    self.metrics.status_write(kind, "written");
                    self.written.insert(key, done);
                }
                Ok(None) => self.metrics.status_write(kind, "skipped"),
                Err(e) => {
                    failures += 1;
                    self.metrics.status_write(kind, "failed");
                    warn!(object = %key, error = %e, "status write failed");
                }
            }
        }
        failures
    }

    fn api(&self, key: &ObjKey) -> Option<Api<DynamicObject>> {
        let version = self.versions.get(&key.kind)?;
        let ar = key.kind.info().api_resource(version);
        Some(if key.kind.cluster_scoped() {
            Api::all_with(self.client.clone(), &ar)
        } else {
            Api::namespaced_with(self.client.clone(), &key.namespace, &ar)
        })
    }

    /// One object's write, re-reading on conflict. `Ok(None)`: nothing written (the object
    /// is gone, already right, or leadership was lost).
    async fn write_one(
        &self,
        w: &Want,
        observed: Observed,
        leader: &watch::Receiver<bool>,
    ) -> Result<Option<Written>, String> {
        let Some(api) = self.api(&w.key) else {
            return Ok(None);
        };
        let mut server = observed.status.as_deref().cloned().unwrap_or(Value::Null);
        let mut rv = observed.resource_version;
        for _ in 0..CONFLICT_RETRIES {
            if !*leader.borrow() {
                return Ok(None);
            }
            let desired = desired(w.key.kind, &w.ours, &server);
            if desired == server {
                return Ok(None);
            }
            let mut status_patch = desired.clone();
            // A merge patch keeps keys it does not mention: clear the ones we no longer set.
            if let (Some(p), Some(s)) = (status_patch.as_object_mut(), server.as_object())
                && owns_whole_status(w.key.kind)
            {
                for k in s.keys() {
                    p.entry(k.clone()).or_insert(Value::Null);
                }
            }
            let mut body = json!({ "status": status_patch });
            if let Some(rv) = &rv {
                body["metadata"] = json!({ "resourceVersion": rv });
            }
            match api
                .patch_status(&w.key.name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(o) => {
                    let echo = o.data.get("status").cloned().unwrap_or(Value::Null);
                    return Ok(Some(Written {
                        desired,
                        echo,
                        replaced: rv,
                    }));
                }
                Err(e) if is_code(&e, 409) => {
                    debug!(object = %w.key, "status write conflicted; reading the object again");
                    match api.get_opt(&w.key.name).await {
                        Ok(Some(o)) => {
                            server = o.data.get("status").cloned().unwrap_or(Value::Null);
                            rv = o.metadata.resource_version;
                        }
                        Ok(None) => return Ok(None),
                        Err(e) => return Err(format!("re-reading after a conflict: {e}")),
                    }
                }
                Err(e) if is_code(&e, 404) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!(
            "still conflicting after {CONFLICT_RETRIES} re-reads"
        ))
    }
}

fn owns_whole_status(kind: Kind) -> bool {
    !matches!(kind, Kind::HttpRoute | Kind::BackendTlsPolicy)
}

/// Every object whose status we hold an opinion on, with our part of it.
fn wants(job: &Job) -> Vec<Want> {
    let r = &job.report;
    let mut out = Vec::new();
    let mut push = |key: ObjKey, v: Result<Value, serde_json::Error>| {
        if let Ok(ours) = v {
            out.push(Want { key, ours });
        }
    };
    for e in r.gateway_classes.values() {
        push(
            ObjKey::new(Kind::GatewayClass, "", &e.name),
            serde_json::to_value(&e.status),
        );
    }
    for e in r.gateways.values() {
        push(
            ObjKey::new(Kind::Gateway, &e.namespace, &e.name),
            serde_json::to_value(&e.status),
        );
    }
    for e in r.listener_sets.values() {
        push(
            ObjKey::new(Kind::ListenerSet, &e.namespace, &e.name),
            serde_json::to_value(&e.status),
        );
    }
    // Routes and policies: also those we have no entry for now, so that entries we wrote
    // earlier (a route since detached from our Gateways) are taken back.
    for key in job.observed.keys() {
        let ours = match key.kind {
            Kind::HttpRoute => r
                .http_routes
                .get(&key.namespace, &key.name)
                .map(|e| serde_json::to_value(&e.status.parents)),
            Kind::BackendTlsPolicy => r
                .backend_tls_policies
                .get(&format!("{}/{}", key.namespace, key.name))
                .map(|e| serde_json::to_value(&e.status.ancestors)),
            _ => continue,
        };
        push(key.clone(), ours.unwrap_or_else(|| Ok(json!([]))));
    }
    out
}

/// The status the server should hold: ours merged with what is not ours, conditions
/// keeping the server's lastTransitionTime where their status did not change.
fn desired(kind: Kind, ours: &Value, server: &Value) -> Value {
    let mut d = match kind {
        Kind::HttpRoute | Kind::BackendTlsPolicy => {
            let field = if kind == Kind::HttpRoute {
                "parents"
            } else {
                "ancestors"
            };
            let theirs = server.get(field).and_then(Value::as_array);
            let mut entries: Vec<Value> = theirs
                .into_iter()
                .flatten()
                .filter(|e| {
                    e.get("controllerName").and_then(Value::as_str) != Some(CONTROLLER_NAME)
                })
                .cloned()
                .collect();
            let ours = ours.as_array().cloned().unwrap_or_default();
            if ours.is_empty() && entries.len() == theirs.map_or(0, Vec::len) {
                // Not ours, and nothing of ours to take back: leave it alone.
                return server.clone();
            }
            entries.extend(ours);
            let mut status = server.as_object().cloned().unwrap_or_default();
            status.insert(field.into(), Value::Array(entries));
            Value::Object(status)
        }
        _ => ours.clone(),
    };
    keep_transition_times(&mut d, server);
    d
}

/// Copies `lastTransitionTime` from `server` into `desired` for every condition whose type
/// and status are unchanged, matching nested entries by their identity (listener name,
/// parentRef/ancestorRef and controllerName).
fn keep_transition_times(desired: &mut Value, server: &Value) {
    match desired {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let Some(s) = server.get(k) else { continue };
                if k == "conditions" {
                    conditions(v, s);
                } else {
                    keep_transition_times(v, s);
                }
            }
        }
        Value::Array(items) => {
            let Some(theirs) = server.as_array() else {
                return;
            };
            for item in items {
                if let Some(s) = theirs.iter().find(|s| same_entry(item, s)) {
                    keep_transition_times(item, s);
                }
            }
        }
        _ => {}
    }
}

fn same_entry(a: &Value, b: &Value) -> bool {
    let id = |v: &Value| {
        (
            v.get("name").cloned(),
            v.get("parentRef").cloned(),
            v.get("ancestorRef").cloned(),
            v.get("controllerName").cloned(),
        )
    };
    id(a) == id(b)
}

fn conditions(desired: &mut Value, server: &Value) {
    let (Some(ours), Some(theirs)) = (desired.as_array_mut(), server.as_array()) else {
        return;
    };
    for c in ours {
        let same = theirs
            .iter()
            .find(|s| s.get("type") == c.get("type") && s.get("status") == c.get("status"));
        if let Some(t) = same.and_then(|s| s.get("lastTransitionTime"))
            && let Some(m) = c.as_object_mut()
        {
            m.insert("lastTransitionTime".into(), t.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_parents_of_other_controllers_are_kept() {
        let server = json!({"parents": [
            {"parentRef": {"name": "other"}, "controllerName": "example.com/other", "conditions": []},
            {"parentRef": {"name": "gw"}, "controllerName": CONTROLLER_NAME, "conditions": [
                {"type": "Accepted", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]}
        ]});
        let ours = json!([{"parentRef": {"name": "gw"}, "controllerName": CONTROLLER_NAME, "conditions": [
            {"type": "Accepted", "status": "True", "lastTransitionTime": "2026-12-01T00:00:00Z"}]}]);
        let d = desired(Kind::HttpRoute, &ours, &server);
        assert_eq!(d, server, "same status: nothing to write, times kept");
        let d = desired(Kind::HttpRoute, &json!([]), &server);
        assert_eq!(
            d["parents"].as_array().unwrap().len(),
            1,
            "ours taken back, theirs kept"
        );
        assert_eq!(d["parents"][0]["controllerName"], "example.com/other");
    }

    #[test]
    fn a_changed_condition_takes_the_new_time() {
        let server = json!({"conditions": [
            {"type": "Programmed", "status": "True", "lastTransitionTime": "old"}]});
        let ours = json!({"conditions": [
            {"type": "Programmed", "status": "False", "lastTransitionTime": "new"}]});
        let d = desired(Kind::Gateway, &ours, &server);
        assert_eq!(d["conditions"][0]["lastTransitionTime"], "new");
    }

    /// The exact requests of a route status write that meets a conflict: a merge patch of
    /// `/status` carrying the resourceVersion it was computed from, a re-read on 409, and
    /// the same patch recomputed from the fresh object (the other controller's new entry
    /// kept).
    #[tokio::test]
    async fn a_conflicting_status_write_rereads_and_retries() {
        use http::{Method, Request, Response};
        use kube::client::Body;
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "default");
        let versions = BTreeMap::from([(Kind::HttpRoute, "v1".to_owned())]);
        let writer = Writer::new(client, versions, Arc::new(Metrics::new()));
        let ours = json!([{"parentRef": {"name": "gw"}, "controllerName": CONTROLLER_NAME,
            "conditions": [{"type": "Accepted", "status": "True", "lastTransitionTime": "t"}]}]);
        let want = Want {
            key: ObjKey::new(Kind::HttpRoute, "shop", "web"),
            ours: ours.clone(),
        };
        let observed = Observed {
            status: None,
            resource_version: Some("7".into()),
        };
        let (_leader_tx, leader) = watch::channel(true);
        let write = tokio::spawn(async move { writer.write_one(&want, observed, &leader).await });
        let reply = |code: u16, v: Value| {
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&v).unwrap()))
                .unwrap()
        };
        let path = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/web";

        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), Method::PATCH);
        assert_eq!(req.uri().to_string(), format!("{path}/status?"));
        assert_eq!(
            req.headers()["content-type"],
            "application/merge-patch+json"
        );
        let body: Value =
            serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"metadata": {"resourceVersion": "7"}, "status": {"parents": ours}})
        );
        send.send_response(reply(
            409,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "Conflict", "code": 409, "message": "the object has been modified"}),
        ));

        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(
            (req.method(), req.uri().to_string()),
            (&Method::GET, path.to_owned())
        );
        let theirs = json!({"parentRef": {"name": "x"}, "controllerName": "example.com/other", "conditions": []});
        send.send_response(reply(
            200,
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "9"},
            "spec": {}, "status": {"parents": [theirs.clone()]}}),
        ));

        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), Method::PATCH);
        let body: Value =
            serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        let mut parents = vec![theirs];
        parents.extend(ours.as_array().unwrap().clone());
        assert_eq!(
            body,
            json!({"metadata": {"resourceVersion": "9"}, "status": {"parents": parents}})
        );
        send.send_response(reply(
            200,
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "10"},
            "status": {"parents": parents}}),
        ));
        let written = write.await.unwrap().unwrap().expect("written");
        assert_eq!(written.replaced.as_deref(), Some("9"));
    }

    #[test]
    fn listener_conditions_match_by_listener_name() {
        let server = json!({"listeners": [
            {"name": "b", "conditions": [{"type": "Accepted", "status": "True", "lastTransitionTime": "tb"}]},
            {"name": "a", "conditions": [{"type": "Accepted", "status": "True", "lastTransitionTime": "ta"}]}]});
        let ours = json!({"listeners": [
            {"name": "a", "conditions": [{"type": "Accepted", "status": "True", "lastTransitionTime": "now"}]}]});
        let d = desired(Kind::Gateway, &ours, &server);
        assert_eq!(
            d["listeners"][0]["conditions"][0]["lastTransitionTime"],
            "ta"
        );
    }
}
