//! Privileged tests of the eBPF outbound capture, in real network namespaces and cgroups.
//! Run as root through `cargo xtask test`; plain `cargo test` lists them as ignored.
//!
//! Topology: a "pod" namespace with a veth to a "peer" namespace that runs a plain server on
//! 10.91.0.2:8080 and [fd91::2]:8080 answering `direct`. The agent's listeners in the pod's
//! namespace answer `agent <original destination>`, so each client sees which path it took
//! and the agent's side records what it read from the map.

use std::{
    io::Write,
    net::{SocketAddr, TcpListener},
    os::fd::AsFd,
    path::Path,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use cedille_agent::{
    datapath::{Attached, Datapath, SocketTarget},
    netns,
};
use cedille_harness::{self as h, Cgroup, Netns, PinDir};

const AGENT_PORT: u16 = 15001;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

struct Topology {
    pod: Netns,
    peer: Netns,
    cgroup: Cgroup,
    pins: PinDir,
}

fn topology() -> Topology {
    h::require_privileges();
    let pod = Netns::new("pod").unwrap();
    let peer = Netns::new("peer").unwrap();
    let (a, b) = h::veth_pair(Some(&pod), Some(&peer)).unwrap();
    pod.addr(&a, "10.91.0.1/24").unwrap();
    pod.addr(&a, "fd91::1/64").unwrap();
    peer.addr(&b, "10.91.0.2/24").unwrap();
    peer.addr(&b, "fd91::2/64").unwrap();
    Topology {
        pod,
        peer,
        cgroup: Cgroup::new("pod").unwrap(),
        pins: PinDir::new().unwrap(),
    }
}

/// Accept loop over non-blocking listeners until stopped; `reply` writes the answer.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start<F>(listeners: Vec<TcpListener>, mut reply: F) -> Self
    where
        F: FnMut(std::net::TcpStream) + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let mut idle = true;
                for l in &listeners {
                    if let Ok((stream, _)) = l.accept() {
                        idle = false;
                        stream.set_nonblocking(false).unwrap();
                        reply(stream);
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The plain server in the peer namespace; counts the connections that reach it.
fn direct_server(peer: &Netns) -> (Server, Arc<AtomicUsize>) {
    let listeners = peer
        .run(|| {
            ["10.91.0.2:8080", "[fd91::2]:8080"].map(|a| {
                let l = TcpListener::bind(a).unwrap();
                l.set_nonblocking(true).unwrap();
                l
            })
        })
        .unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let server = Server::start(listeners.into(), move |mut s| {
        counter.fetch_add(1, Ordering::SeqCst);
        let _ = s.write_all(b"direct\n");
    });
    (server, hits)
}

/// What the agent read for one accepted connection.
#[derive(Debug, Clone)]
struct Seen {
    original: Option<SocketAddr>,
    peer: SocketAddr,
}

/// The agent side: listeners in the pod's namespace that look up each connection's original
/// destination in the eBPF map and answer with it.
fn agent(pod: &Netns, datapath: Arc<Mutex<Datapath>>) -> (Server, Arc<Mutex<Vec<Seen>>>) {
    let listeners = vec![
        netns::bind_in(pod.path(), ([127, 0, 0, 1], AGENT_PORT).into()).unwrap(),
        netns::bind_in(pod.path(), "[::1]:15001".parse().unwrap()).unwrap(),
    ];
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let server = Server::start(listeners, move |mut s| {
        let original = datapath
            .lock()
            .unwrap()
            .take_original_dst(&s.as_fd())
            .unwrap();
        let peer = s.peer_addr().unwrap();
        log.lock().unwrap().push(Seen { original, peer });
        let text = original.map_or("none".to_owned(), |a| a.to_string());
        let _ = writeln!(s, "agent {text}");
    });
    (server, seen)
}

fn load(pins: &Path, pod: &Netns) -> Datapath {
    let mut dp = Datapath::load(pins).expect("load eBPF datapath");
    let cookie = netns::netns_cookie_of(pod.path()).unwrap();
    dp.set_target(cookie, SocketTarget::loopback(AGENT_PORT))
        .unwrap();
    dp
}

/// Connects from a bash process to host:port and returns the first line it reads, or the
/// process's failure.
fn connect(pod: &Netns, cgroup: Option<&Path>, host: &str, port: u16) -> Result<String, String> {
    let mut cmd = Command::new("bash");
    cmd.args([
        "-c",
        "exec 3<>/dev/tcp/$0/$1 && head -n1 <&3",
        host,
        &port.to_string(),
    ]);
    let out = h::run_in(Some(pod), cgroup, cmd, CLIENT_TIMEOUT).unwrap();
    if out.success() {
        Ok(out.stdout.trim().to_owned())
    } else {
        Err(format!(
            "status {:?} timed_out {} stderr {}",
            out.status,
            out.timed_out,
            out.stderr.trim()
        ))
    }
}

#[test]
#[ignore = "privileged: run with `cargo xtask test` as root"]
fn privileged_connect_in_cgroup_lands_on_agent_with_original_destination() {
    let t = topology();
    let (_direct, direct_hits) = direct_server(&t.peer);
    let mut dp = load(t.pins.path(), &t.pod);
    assert_eq!(
        dp.attach("pod-a", t.cgroup.path()).unwrap(),
        Attached::Created
    );
    let dp = Arc::new(Mutex::new(dp));
    let (_agent, seen) = agent(&t.pod, dp.clone());
    let cg = Some(t.cgroup.path());

    // IPv4, from a process in the pod's cgroup.
    assert_eq!(
        connect(&t.pod, cg, "10.91.0.2", 8080).unwrap(),
        "agent 10.91.0.2:8080"
    );
    // IPv6.
    assert_eq!(
        connect(&t.pod, cg, "fd91::2", 8080).unwrap(),
        "agent [fd91::2]:8080"
    );
    // A destination nobody listens on: the agent still gets it, with its original port.
    assert_eq!(
        connect(&t.pod, cg, "10.91.0.77", 443).unwrap(),
        "agent 10.91.0.77:443"
    );
    // A container cgroup below the pod's inherits the programs.
    let container = t.cgroup.child("container").unwrap();
    assert_eq!(
        connect(&t.pod, Some(&container), "10.91.0.2", 8080).unwrap(),
        "agent 10.91.0.2:8080"
    );
    assert_eq!(
        direct_hits.load(Ordering::SeqCst),
        0,
        "a redirected connect leaked"
    );

    // The agent's side: every connection came from the pod's loopback (the redirect
    // target) and carried its original destination.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
    for s in &seen {
        assert!(s.peer.ip().is_loopback(), "{s:?}");
        assert!(s.original.is_some(), "{s:?}");
    }
    let dp = dp.lock().unwrap();
    assert_eq!(dp.pending_original_dsts(), 0, "the agent took every entry");
    let stats = dp.stats().unwrap();
    assert_eq!(stats.redirected, 4, "{stats:?}");
    assert_eq!(stats.recorded, 4, "{stats:?}");
    assert_eq!(stats.map_update_failed, 0, "{stats:?}");
    drop(dp);

    // Negative: the same namespace but outside the cgroup is not redirected.
    assert_eq!(connect(&t.pod, None, "10.91.0.2", 8080).unwrap(), "direct");
    assert_eq!(connect(&t.pod, None, "fd91::2", 8080).unwrap(), "direct");
    assert_eq!(direct_hits.load(Ordering::SeqCst), 2);
    // Loopback destinations inside the pod are not meshed either: with the agent's own
    // port as destination, nothing is recorded for it.
    assert_eq!(
        connect(&t.pod, cg, "127.0.0.1", AGENT_PORT).unwrap(),
        "agent none"
    );
}

#[test]
#[ignore = "privileged: run with `cargo xtask test` as root"]
fn privileged_restart_adopts_pins_and_fails_closed_meanwhile() {
    let t = topology();
    let (_direct, direct_hits) = direct_server(&t.peer);
    let cg = Some(t.cgroup.path());
    {
        let mut dp = load(t.pins.path(), &t.pod);
        assert_eq!(
            dp.attach("pod-b", t.cgroup.path()).unwrap(),
            Attached::Created
        );
        let (_agent, _) = agent(&t.pod, Arc::new(Mutex::new(dp)));
        assert_eq!(
            connect(&t.pod, cg, "10.91.0.2", 8080).unwrap(),
            "agent 10.91.0.2:8080"
        );
        // The agent "dies": its process state (datapath, listeners) goes away.
    }

    // Agent down: the pinned links keep steering to the agent's port, where nothing
    // listens, so the connection fails instead of leaving the pod unproxied.
    let err = connect(&t.pod, cg, "10.91.0.2", 8080).unwrap_err();
    assert!(err.contains("refused"), "{err}");
    assert_eq!(
        direct_hits.load(Ordering::SeqCst),
        0,
        "plaintext leaked while down"
    );

    // Restart: the maps and links pinned by the first run are adopted, not re-attached.
    let mut dp = Datapath::load(t.pins.path()).unwrap();
    assert_eq!(dp.pinned_ids().unwrap(), vec!["pod-b".to_owned()]);
    assert_eq!(
        dp.target_count(),
        1,
        "redirect target survived in the pinned map"
    );
    assert_eq!(
        dp.attach("pod-b", t.cgroup.path()).unwrap(),
        Attached::Adopted
    );
    let dp = Arc::new(Mutex::new(dp));
    let (agent_server, seen) = agent(&t.pod, dp.clone());
    assert_eq!(
        connect(&t.pod, cg, "fd91::2", 8080).unwrap(),
        "agent [fd91::2]:8080"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);

    // Un-enrolling detaches for real: the pod talks directly again and no link pin is left.
    let cookie = netns::netns_cookie_of(t.pod.path()).unwrap();
    {
        let mut dp = dp.lock().unwrap();
        assert!(dp.detach("pod-b").unwrap());
        assert!(dp.remove_target(cookie).unwrap());
        assert!(dp.pinned_ids().unwrap().is_empty());
        assert_eq!(dp.target_count(), 0);
    }
    drop(agent_server);
    assert_eq!(connect(&t.pod, cg, "10.91.0.2", 8080).unwrap(), "direct");
    assert_eq!(
        t.pins.pinned().unwrap(),
        7,
        "only the seven maps stay pinned"
    );
}
