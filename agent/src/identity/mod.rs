//! Workload identities: SPIFFE IDs, the X.509 SVIDs the agent holds for the service accounts
//! of its enrolled pods, the sources that sign them (a CA directory, or cert-manager), their
//! rotation, and the verification of peers.
//!
//! The agent asks [`Identities::sync`] for the set of identities its enrolled pods need. Each
//! one gets a task that issues its SVID, renews it at half of its lifetime (retrying with
//! backoff; the old certificate keeps serving meanwhile) and ends when the identity is no
//! longer needed. The connection path reads the current SVID without locks held across I/O.

pub mod ca;
pub mod certmanager;
pub mod verify;

use std::{
    collections::BTreeMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwapOption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use crate::metrics::Metrics;

/// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }

    /// Parses a Kubernetes workload SPIFFE ID. Other SPIFFE ID shapes are refused: the agent
    /// authorizes by namespace and service account.
    pub fn parse(uri: &str) -> Result<Self, String> {
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| format!("{uri:?} is not a spiffe:// URI"))?;
        let (td, path) = rest
            .split_once('/')
            .ok_or_else(|| format!("{uri:?} has no path"))?;
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["ns", ns, "sa", sa] if valid_td(td) && !ns.is_empty() && !sa.is_empty() => {
                Ok(Self::new(td, ns, sa))
            }
            _ => Err(format!(
                "{uri:?} is not spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
            )),
        }
    }
}

/// SPIFFE trust domain names: lowercase letters, digits, dots, dashes and underscores.
pub fn valid_td(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// A signed identity: the leaf first, then any intermediates.
pub struct Svid {
    pub id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When the agent received it (sources backdate `not_before` for clock skew).
    pub issued_at: SystemTime,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    /// The roots peers' certificates must chain to (may hold several during a CA rotation).
    pub bundle: Arc<verify::Bundle>,
    /// The same, ready for rustls.
    pub certified: Arc<rustls::sign::CertifiedKey>,
}

impl Svid {
    /// When to renew: half of the remaining lifetime at issuance.
    pub fn renew_at(&self) -> SystemTime {
        let start = self.issued_at.max(self.not_before);
        let life = self.not_after.duration_since(start).unwrap_or_default();
        start + life / 2
    }
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("id", &self.id.to_string())
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Signs SVIDs. The key pair is made by the agent; sources see only the CSR or public key.
pub trait Source: Send + Sync {
    /// Issues an SVID for `id` valid for about `lifetime`.
    fn issue<'a>(
        &'a self,
        id: &'a SpiffeId,
        lifetime: Duration,
    ) -> BoxFuture<'a, Result<Svid, String>>;
    /// For logs and `/config`.
    fn describe(&self) -> String;
}

/// One identity as `/config` shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityReport {
    pub spiffe_id: String,
    pub serial: Option<String>,
    pub not_after: Option<String>,
    pub renewals: u64,
    pub last_error: Option<String>,
}

struct Slot {
    current: Arc<ArcSwapOption<Svid>>,
    ready: watch::Receiver<bool>,
    status: Arc<Mutex<SlotStatus>>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct SlotStatus {
    renewals: u64,
    last_error: Option<String>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The SVIDs this node holds, one per service account with an enrolled pod.
pub struct Identities {
    source: Arc<dyn Source>,
    trust_domain: String,
    lifetime: Duration,
    metrics: Arc<Metrics>,
    slots: Mutex<BTreeMap<SpiffeId, Slot>>,
}

/// The first retry after a failed issuance; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Identities {
    pub fn new(
        source: Arc<dyn Source>,
        trust_domain: &str,
        lifetime: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            source,
            trust_domain: trust_domain.to_owned(),
            lifetime,
            metrics,
            slots: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn id(&self, namespace: &str, service_account: &str) -> SpiffeId {
        SpiffeId::new(&self.trust_domain, namespace, service_account)
    }

    /// Holds exactly `wanted`: starts issuing new identities, drops the others. Must run
    /// inside the tokio runtime.
    pub fn sync(&self, wanted: impl IntoIterator<Item = SpiffeId>) {
        let wanted: std::collections::BTreeSet<SpiffeId> = wanted.into_iter().collect();
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|id, _| {
            let keep = wanted.contains(id);
            if !keep {
                info!(identity = %id, "identity dropped: no enrolled pod uses it any more");
                self.metrics.forget_identity(&id.to_string());
            }
            keep
        });
        for id in wanted {
            if slots.contains_key(&id) {
                continue;
            }
            let current = Arc::new(ArcSwapOption::empty());
            let status = Arc::new(Mutex::new(SlotStatus::default()));
            let (tx, rx) = watch::channel(false);
            let task = tokio::spawn(rotate(
                self.source.clone(),
                id.clone(),
                self.lifetime,
                current.clone(),
                status.clone(),
                tx,
                self.metrics.clone(),
            ));
            slots.insert(
                id,
                Slot {
                    current,
                    ready: rx,
                    status,
                    task,
                },
            );
        }
    }

    /// A live handle to `id`'s SVID (follows renewals), for a TLS server's certificate
    /// resolver.
    pub fn handle(&self, id: &SpiffeId) -> Option<Arc<ArcSwapOption<Svid>>> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.get(id).map(|s| s.current.clone())
    }

    /// The SVID of `id`, waiting up to `timeout` for its first issuance.
    pub async fn wait(&self, id: &SpiffeId, timeout: Duration) -> Result<Arc<Svid>, String> {
        let (current, mut ready) = {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            let s = slots
                .get(id)
                .ok_or_else(|| format!("{id} is not an identity of this node"))?;
            (s.current.clone(), s.ready.clone())
        };
        if let Some(svid) = current.load_full() {
            return Ok(svid);
        }
        let waited = tokio::time::timeout(timeout, ready.wait_for(|r| *r)).await;
        match (waited, current.load_full()) {
            (_, Some(svid)) => Ok(svid),
            (Err(_), None) => Err(format!("{id}: no certificate issued within {timeout:?}")),
            (Ok(_), None) => Err(format!("{id}: dropped")),
        }
    }

    pub fn report(&self) -> Vec<IdentityReport> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .map(|(id, s)| {
                let svid = s.current.load_full();
                let status = s.status.lock().unwrap_or_else(|e| e.into_inner());
                IdentityReport {
                    spiffe_id: id.to_string(),
                    serial: svid.as_ref().map(|s| s.serial.clone()),
                    not_after: svid.as_ref().map(|s| cedille_common::rfc3339(s.not_after)),
                    renewals: status.renewals,
                    last_error: status.last_error.clone(),
                }
            })
            .collect()
    }

    pub fn source(&self) -> String {
        self.source.describe()
    }
}

async fn rotate(
    source: Arc<dyn Source>,
    id: SpiffeId,
    lifetime: Duration,
    current: Arc<ArcSwapOption<Svid>>,
    status: Arc<Mutex<SlotStatus>>,
    ready: watch::Sender<bool>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match source.issue(&id, lifetime).await {
            Ok(svid) => {
                backoff = FIRST_BACKOFF;
                let renew_at = svid.renew_at();
                let expiry = svid
                    .not_after
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                metrics.identity_issued(&id.to_string(), expiry);
                {
                    let mut st = status.lock().unwrap_or_else(|e| e.into_inner());
                    if current.load().is_some() {
                        st.renewals += 1;
                    }
                    st.last_error = None;
                }
                info!(identity = %id, serial = %svid.serial, not_after = %cedille_common::rfc3339(svid.not_after), "certificate issued");
                current.store(Some(Arc::new(svid)));
                let _ = ready.send(true);
                let wait = renew_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                metrics.identity_error(&id.to_string());
                let still = current
                    .load()
                    .as_ref()
                    .map(|s| s.not_after > SystemTime::now());
                warn!(identity = %id, error = %e, retry_in = ?backoff, current_still_valid = ?still, "issuing certificate failed");
                status.lock().unwrap_or_else(|e| e.into_inner()).last_error = Some(e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Parses `90s`, `30m`, `24h` or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 90s, 30m or 24h"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !(secs > 0.0 && secs < 1e9) {
        return Err(format!("{s:?}: must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_round_trip_and_refuse_other_shapes() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        assert_eq!(id, SpiffeId::new("cluster.local", "shop", "web"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
        for bad in [
            "https://cluster.local/ns/shop/sa/web",
            "spiffe://cluster.local",
            "spiffe://cluster.local/ns/shop",
            "spiffe://cluster.local/ns/shop/sa/web/extra",
            "spiffe://Cluster.Local/ns/shop/sa/web",
            "spiffe:///ns/shop/sa/web",
            "spiffe://cluster.local/ns//sa/web",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
