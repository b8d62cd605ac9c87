//! Enrollment (control): which of this node's pods are meshed, kept in step with the cluster
//! view. The kernel work (listeners in the pod, map entries, eBPF programs) sits behind
//! [`Host`], so this reconciler is unit-tested without a kernel.
//!
//! Un-enrollment comes first (pods gone, no longer meshed, re-addressed, or whose cgroup
//! vanished), then enrollment of the rest; a pod that cannot be enrolled yet is `waiting`
//! and retried on the next reconcile. Nothing here is on the connection path.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, sync::Mutex};

use serde::Serialize;

use crate::mesh::{Mesh, PodView};

/// The kernel side of enrollment.
pub trait Host: Send + Sync {
    /// One pod's attachment; dropping it must not detach (that is [`Host::unenroll`]'s job).
    type Enrollment: Send;
    /// Attaches `view`; `Err` says why the pod must wait.
    fn enroll(&self, view: &PodView) -> Result<Self::Enrollment, String>;
    fn unenroll(&self, view: &PodView, e: Self::Enrollment);
    /// Whether the attachment still stands (its cgroup exists).
    fn intact(&self, e: &Self::Enrollment) -> bool;
    /// Removes what earlier runs or failed steps left, keeping `kept`.
    fn cleanup(&self, kept: &[&Self::Enrollment]);
    /// (cgroup, netns cookie), for `/config`.
    fn describe(&self, e: &Self::Enrollment) -> (Option<PathBuf>, Option<u64>);
}

/// What the agent knows of one pod, for `/config`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReport {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ips: Vec<IpAddr>,
    pub service_account: String,
    /// `enrolled`, `waiting` (should be, cannot be yet) or `not-enrolled`.
    pub state: &'static str,
    pub reason: Option<String>,
    pub cgroup: Option<PathBuf>,
    pub netns_cookie: Option<u64>,
}

enum State<E> {
    Enrolled(E),
    Waiting(String),
    NotEnrolled(String),
}

struct Entry<E> {
    view: PodView,
    state: State<E>,
}

pub struct Enroller<H: Host> {
    pub host: H,
    pods: Mutex<BTreeMap<String, Entry<H::Enrollment>>>,
}

/// Enrolled and waiting pods after a reconcile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub enrolled: usize,
    pub waiting: usize,
}

impl<H: Host> Enroller<H> {
    pub fn new(host: H) -> Self {
        Self {
            host,
            pods: Mutex::new(BTreeMap::new()),
        }
    }

    /// Makes the enrolled set match `mesh`; retries pods that could not be enrolled before.
    pub fn reconcile(&self, mesh: &Mesh) -> Counts {
        let wanted: BTreeMap<&str, &PodView> =
            mesh.pods.iter().map(|p| (p.uid.as_str(), p)).collect();
        let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        let uids: Vec<String> = pods.keys().cloned().collect();
        for uid in uids {
            let keep = match (wanted.get(uid.as_str()), pods.get(&uid)) {
                (Some(v), Some(e)) => match &e.state {
                    State::Enrolled(en) => {
                        v.enroll.is_ok() && v.ips == e.view.ips && self.host.intact(en)
                    }
                    _ => true,
                },
                _ => false,
            };
            if !keep
                && let Some(e) = pods.remove(&uid)
                && let State::Enrolled(en) = e.state
            {
                self.host.unenroll(&e.view, en);
            }
        }
        for (uid, view) in wanted {
            let current = pods.remove(uid);
            let state = match (view.enroll.clone(), current.map(|e| e.state)) {
                (Err(why), _) => State::NotEnrolled(why),
                (Ok(()), Some(State::Enrolled(en))) => State::Enrolled(en),
                (Ok(()), _) => match self.host.enroll(view) {
                    Ok(en) => State::Enrolled(en),
                    Err(why) => State::Waiting(why),
                },
            };
            pods.insert(
                uid.to_owned(),
                Entry {
                    view: view.clone(),
                    state,
                },
            );
        }
        let kept: Vec<&H::Enrollment> = pods
            .values()
            .filter_map(|e| match &e.state {
                State::Enrolled(en) => Some(en),
                _ => None,
            })
            .collect();
        self.host.cleanup(&kept);
        Counts {
            enrolled: kept.len(),
            waiting: pods
                .values()
                .filter(|e| matches!(e.state, State::Waiting(_)))
                .count(),
        }
    }

    /// Calls `f` with each enrolled pod's attachment.
    pub fn each_enrolled(&self, mut f: impl FnMut(&PodView, &H::Enrollment)) {
        let pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        for e in pods.values() {
            if let State::Enrolled(en) = &e.state {
                f(&e.view, en);
            }
        }
    }

    /// Un-enrolls every pod (uninstall); a normal shutdown leaves pods enrolled.
    pub fn reset(&self) {
        let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        for (_, e) in std::mem::take(&mut *pods) {
            if let State::Enrolled(en) = e.state {
                self.host.unenroll(&e.view, en);
            }
        }
    }

    pub fn report(&self) -> Vec<PodReport> {
        let pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        pods.values()
            .map(|e| {
                let (state, reason, (cgroup, cookie)) = match &e.state {
                    State::Enrolled(en) => ("enrolled", None, self.host.describe(en)),
                    State::Waiting(w) => ("waiting", Some(w.clone()), (None, None)),
                    State::NotEnrolled(w) => ("not-enrolled", Some(w.clone()), (None, None)),
                };
                PodReport {
                    namespace: e.view.namespace.clone(),
                    name: e.view.name.clone(),
                    uid: e.view.uid.clone(),
                    ips: e.view.ips.clone(),
                    service_account: e.view.service_account.clone(),
                    state,
                    reason,
                    cgroup,
                    netns_cookie: cookie,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    //! The reconciler against a host that records what it is asked to do.

    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[derive(Default)]
    struct Fake {
        log: Mutex<Vec<String>>,
        /// UIDs whose cgroup does not exist yet.
        missing: Mutex<Vec<String>>,
        broken: AtomicBool,
    }

    struct Att {
        uid: String,
    }

    impl Host for Fake {
        type Enrollment = Att;
        fn enroll(&self, view: &PodView) -> Result<Att, String> {
            if self.missing.lock().unwrap().contains(&view.uid) {
                return Err("no cgroup yet".into());
            }
            self.log
                .lock()
                .unwrap()
                .push(format!("enroll {}", view.name));
            Ok(Att {
                uid: view.uid.clone(),
            })
        }
        fn unenroll(&self, view: &PodView, _e: Att) {
            self.log
                .lock()
                .unwrap()
                .push(format!("unenroll {}", view.name));
        }
        fn intact(&self, e: &Att) -> bool {
            !(self.broken.load(Ordering::Relaxed) && e.uid == "u-a")
        }
        fn cleanup(&self, kept: &[&Att]) {
            self.log
                .lock()
                .unwrap()
                .push(format!("cleanup {}", kept.len()));
        }
        fn describe(&self, _e: &Att) -> (Option<PathBuf>, Option<u64>) {
            (None, Some(7))
        }
    }

    fn view(name: &str, ip: &str, enroll: Result<(), String>) -> PodView {
        PodView {
            namespace: "shop".into(),
            name: name.into(),
            uid: format!("u-{name}"),
            ips: vec![ip.parse().unwrap()],
            service_account: "default".into(),
            labels: Default::default(),
            strict: false,
            enroll,
        }
    }

    fn mesh(pods: Vec<PodView>) -> Mesh {
        Mesh {
            pods,
            ..Mesh::default()
        }
    }

    fn take(h: &Fake) -> Vec<String> {
        std::mem::take(&mut *h.log.lock().unwrap())
    }

    #[test]
    fn enrolls_waits_retries_and_unenrolls() {
        let e = Enroller::new(Fake::default());
        e.host.missing.lock().unwrap().push("u-b".into());
        let m = mesh(vec![
            view("a", "10.0.0.1", Ok(())),
            view("b", "10.0.0.2", Ok(())),
            view("c", "10.0.0.3", Err("namespace not labelled".into())),
        ]);
        assert_eq!(
            e.reconcile(&m),
            Counts {
                enrolled: 1,
                waiting: 1
            }
        );
        assert_eq!(take(&e.host), ["enroll a", "cleanup 1"]);
        let states: Vec<_> = e.report().iter().map(|r| r.state).collect();
        assert_eq!(states, ["enrolled", "waiting", "not-enrolled"]);
        // b's cgroup appears: retried; a is left alone.
        e.host.missing.lock().unwrap().clear();
        assert_eq!(
            e.reconcile(&m),
            Counts {
                enrolled: 2,
                waiting: 0
            }
        );
        assert_eq!(take(&e.host), ["enroll b", "cleanup 2"]);
        // a is re-addressed: un-enrolled, then enrolled again; b leaves the mesh.
        let m = mesh(vec![
            view("a", "10.0.0.9", Ok(())),
            view("b", "10.0.0.2", Err("annotated disabled".into())),
        ]);
        e.reconcile(&m);
        assert_eq!(
            take(&e.host),
            ["unenroll a", "unenroll b", "enroll a", "cleanup 1"]
        );
        // A vanished cgroup un-enrolls and enrolls anew.
        e.host.broken.store(true, Ordering::Relaxed);
        e.reconcile(&m);
        assert_eq!(take(&e.host), ["unenroll a", "enroll a", "cleanup 1"]);
        e.host.broken.store(false, Ordering::Relaxed);
        // Gone from the view: un-enrolled; reset un-enrolls the rest.
        e.reconcile(&mesh(vec![]));
        assert_eq!(take(&e.host), ["unenroll a", "cleanup 0"]);
        e.reconcile(&m);
        take(&e.host);
        e.reset();
        assert_eq!(take(&e.host), ["unenroll a"]);
        assert!(e.report().is_empty());
    }
}
