//! Leader election on a `coordination.k8s.io/v1` Lease, with optimistic concurrency: every
//! write carries the resourceVersion it read, so of two replicas racing for the Lease the
//! API server lets exactly one win (the other gets 409 Conflict).
//!
//! Timing follows client-go's elector. A holder renews every `retry_period`; if it cannot
//! renew for `renew_deadline` it stops acting as leader, which is before anyone else may
//! take over (`lease_duration` > `renew_deadline`). A standby never trusts the holder's
//! clock: it takes over when it has seen the same Lease record, unrenewed, for a whole
//! `lease_duration` of its own time. A leader that shuts down releases the Lease, so the
//! next replica takes over on its next try instead of waiting for expiry.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct Timings {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: Timings,
    /// The last Lease record seen and when it was first seen in that state, on this
    /// replica's clock.
    observed: Option<(Record, Instant)>,
    last_renew: Option<Instant>,
    leader: watch::Sender<bool>,
}

/// What identifies a Lease record's state: holder, renewTime, resourceVersion.
type Record = (Option<String>, Option<MicroTime>, Option<String>);

/// What one attempt found.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Leading,
    Following(Option<String>),
}

impl Elector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timings: Timings,
    ) -> (Self, watch::Receiver<bool>) {
        let (leader, rx) = watch::channel(false);
        (
            Self {
                api: Api::namespaced(client, namespace),
                name: name.to_owned(),
                identity: identity.to_owned(),
                timings,
                observed: None,
                last_renew: None,
                leader,
            },
            rx,
        )
    }

    /// Runs until `stop` turns true, then releases the Lease if this replica holds it.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        info!(lease = %self.name, identity = %self.identity, "leader election started");
        loop {
            let started = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => {
                    self.last_renew = Some(started);
                    self.set_leader(true, None);
                }
                Ok(Attempt::Following(holder)) => self.set_leader(false, holder),
                Err(e) => {
                    let overdue = self
                        .last_renew
                        .is_none_or(|t| started.duration_since(t) >= self.timings.renew_deadline);
                    if *self.leader.borrow() && overdue {
                        warn!(error = %e, "cannot renew the Lease within the renew deadline; no longer leader");
                        self.set_leader(false, None);
                    } else {
                        warn!(error = %e, "leader election: Lease request failed; retrying");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.timings.retry_period) => {}
                _ = stop.changed() => break,
            }
        }
        if *self.leader.borrow() {
            self.set_leader(false, None);
            match self.release().await {
                Ok(()) => info!(lease = %self.name, "released the Lease"),
                Err(e) => {
                    warn!(error = %e, "could not release the Lease; the next leader waits for it to expire")
                }
            }
        }
    }

    fn set_leader(&mut self, leading: bool, holder: Option<String>) {
        let was = self.leader.send_replace(leading);
        if was != leading {
            if leading {
                info!(lease = %self.name, identity = %self.identity, "became leader: writing status");
            } else {
                info!(lease = %self.name, holder = holder.as_deref().unwrap_or("-"), "not leader: status is written by the holder");
                self.last_renew = None;
            }
        }
    }

    fn spec_for_me(&self, previous: Option<&LeaseSpec>, now: MicroTime) -> LeaseSpec {
        let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
        let ours = previous.and_then(|s| s.holder_identity.as_deref()) == Some(&self.identity);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timings.lease_duration.as_secs().max(1) as i32),
            acquire_time: if ours {
                previous.and_then(|s| s.acquire_time.clone())
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if ours || previous.is_none() {
                transitions
            } else {
                transitions + 1
            }),
            ..Default::default()
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec_for_me(None, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                Err(e) if is_code(&e, 409) => Ok(Attempt::Following(None)),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = (
            holder.clone(),
            spec.renew_time.clone(),
            lease.metadata.resource_version.clone(),
        );
        let seen_at = match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((record, at));
                at
            }
        };
        let duration = spec
            .lease_duration_seconds
            .filter(|s| *s > 0)
            .map_or(self.timings.lease_duration, |s| {
                Duration::from_secs(s as u64)
            });
        let mine = holder.as_deref() == Some(self.identity.as_str());
        let expired = holder.is_none() || seen_at.elapsed() >= duration;
        if !mine && !expired {
            return Ok(Attempt::Following(holder));
        }
        lease.spec = Some(self.spec_for_me(Some(&spec), now));
        // `replace` sends the resourceVersion read above: a concurrent writer makes it 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                if !mine {
                    info!(lease = %self.name, previous = holder.as_deref().unwrap_or("-"), "acquired the Lease");
                }
                Ok(Attempt::Leading)
            }
            Err(e) if is_code(&e, 409) => Ok(Attempt::Following(holder)),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (empty holder, 1 s duration), as client-go does on release.
    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}

pub fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

#[cfg(test)]
mod tests {
    //! The exact requests the elector sends, against kube's `tower-test` mock.

    use super::*;
    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn client() -> (Client, Handle) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(svc, "default"), handle)
    }

    fn lease(holder: &str, rv: &str) -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "cedille-gateway", "namespace": "infra", "resourceVersion": rv},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": "2026-01-01T00:00:00.000000Z",
                     "leaseTransitions": 3}})
    }

    fn reply(code: u16, v: &Value) -> Response<Body> {
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(v).unwrap()))
            .unwrap()
    }

    async fn next(
        handle: &mut Handle,
    ) -> (
        Request<Body>,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        tokio::time::timeout(Duration::from_secs(5), handle.next_request())
            .await
            .expect("a request")
            .expect("the client is alive")
    }

    #[tokio::test]
    async fn renewal_is_a_get_then_a_put_carrying_the_resource_version_read() {
        let (client, mut handle) = client();
        let (mut elector, _leader) = Elector::new(
            client,
            "infra",
            "cedille-gateway",
            "gw-a",
            Timings::default(),
        );
        let attempt = tokio::spawn(async move { elector.try_acquire_or_renew().await });

        let (req, send) = next(&mut handle).await;
        assert_eq!(req.method(), Method::GET);
        assert_eq!(
            req.uri().to_string(),
            "/apis/coordination.k8s.io/v1/namespaces/infra/leases/cedille-gateway"
        );
        send.send_response(reply(200, &lease("gw-a", "41")));

        let (req, send) = next(&mut handle).await;
        assert_eq!(req.method(), Method::PUT);
        assert_eq!(
            req.uri().to_string(),
            "/apis/coordination.k8s.io/v1/namespaces/infra/leases/cedille-gateway?"
        );
        let body: Value =
            serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(
            body["metadata"]["resourceVersion"], "41",
            "optimistic concurrency"
        );
        assert_eq!(body["spec"]["holderIdentity"], "gw-a");
        assert_eq!(
            body["spec"]["leaseTransitions"], 3,
            "a renewal is not a transition"
        );
        assert_eq!(
            body["spec"]["acquireTime"], "2026-01-01T00:00:00.000000Z",
            "kept on renewal"
        );
        assert_ne!(
            body["spec"]["renewTime"], "2026-01-01T00:00:00.000000Z",
            "renewed now"
        );
        send.send_response(reply(200, &lease("gw-a", "42")));
        assert_eq!(attempt.await.unwrap().unwrap(), Attempt::Leading);
    }

    #[tokio::test]
    async fn a_held_lease_is_left_alone_and_a_lost_race_is_a_409() {
        let (client, mut handle) = client();
        let (mut elector, _leader) = Elector::new(
            client,
            "infra",
            "cedille-gateway",
            "gw-b",
            Timings::default(),
        );
        let attempt = tokio::spawn(async move {
            let first = elector.try_acquire_or_renew().await.unwrap();
            (first, elector)
        });
        let (_, send) = next(&mut handle).await;
        send.send_response(reply(200, &lease("gw-a", "41")));
        let (first, mut elector) = attempt.await.unwrap();
        assert_eq!(
            first,
            Attempt::Following(Some("gw-a".into())),
            "no write while held"
        );

        // No Lease yet: a create; another replica created it first: 409, following.
        let attempt = tokio::spawn(async move { elector.try_acquire_or_renew().await });
        let (_, send) = next(&mut handle).await;
        send.send_response(reply(404, &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": "leases.coordination.k8s.io \"cedille-gateway\" not found"})));
        let (req, send) = next(&mut handle).await;
        assert_eq!(req.method(), Method::POST);
        assert_eq!(
            req.uri().to_string(),
            "/apis/coordination.k8s.io/v1/namespaces/infra/leases?"
        );
        let body: Value =
            serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(body["spec"]["holderIdentity"], "gw-b");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
        send.send_response(reply(
            409,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "AlreadyExists", "code": 409, "message": "already exists"}),
        ));
        assert_eq!(attempt.await.unwrap().unwrap(), Attempt::Following(None));
    }
}
