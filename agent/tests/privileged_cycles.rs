//! Privileged: 1,000 enroll and un-enroll cycles of a real pod (network namespace, cgroup,
//! process) through the agent's reconciler leave every eBPF map, pin and descriptor count
//! where it started. Run as root through `cargo xtask test`.

use std::{process::Command, sync::Arc};

use cedille_agent::{
    datapath::{Datapath, MapCounts},
    mesh::{Mesh, PodView},
    metrics::Metrics,
    node::{Node, Settings},
};
use cedille_harness::{self as h, Cgroup, Netns, PinDir};

const PROBE: &str = env!("CARGO_BIN_EXE_cedille-probe");
const UID: &str = "dddddddd-0000-4000-8000-000000000004";

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "privileged: run through `cargo xtask test` as root"]
async fn privileged_thousand_enroll_cycles_leave_nothing_behind() {
    h::require_privileges();
    let ns = Netns::new("cyc").unwrap();
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    let (inside, _outside) = h::veth_pair(Some(&ns), None).unwrap();
    ns.addr(&inside, "10.94.0.1/24").unwrap();
    let cg = Cgroup::new("cyc").unwrap();
    let pod_cgroup = cg.path().join(format!("kubepods/pod{UID}/ctr"));
    std::fs::create_dir_all(&pod_cgroup).unwrap();
    let mut cmd = Command::new(PROBE);
    cmd.args(["serve", "0.0.0.0:8080"]);
    let _server = h::spawn_in(Some(&ns), Some(&pod_cgroup), cmd).unwrap();
    let pins = PinDir::new().unwrap();

    let settings = Settings {
        cgroup_root: cg.path().to_owned(),
        fail_open: false,
        outbound_port: 15001,
        inbound_port: 15006,
        no_ebpf: false,
    };
    let node = Node::new(
        settings,
        Datapath::load(pins.path()).unwrap(),
        Arc::new(Metrics::new()),
        None,
    )
    .unwrap();
    let view = |enroll: Result<(), String>| Mesh {
        pods: vec![PodView {
            namespace: "shop".into(),
            name: "d".into(),
            uid: UID.into(),
            ips: vec!["10.94.0.1".parse().unwrap()],
            service_account: "default".into(),
            labels: Default::default(),
            strict: false,
            enroll,
        }],
        ..Mesh::default()
    };
    let baseline = node.map_counts();
    assert_eq!(baseline, MapCounts::default());
    // Warm up once so lazily created runtime resources are not counted as leaks.
    node.reconcile(view(Ok(())));
    node.reconcile(view(Err("off".into())));
    let fds = open_fds();

    let started = std::time::Instant::now();
    let mut retries = 0;
    for i in 0..1000 {
        node.reconcile(view(Ok(())));
        // A pod that cannot be enrolled yet is retried, as the agent's loop does every
        // second; here at once, a bounded number of times.
        let mut tries = 0;
        while node.report()[0].state == "waiting" && tries < 100 {
            tries += 1;
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            node.reconcile(view(Ok(())));
        }
        retries += tries;
        let report = node.report();
        assert_eq!(report[0].state, "enrolled", "cycle {i}: {report:?}");
        let counts = node.map_counts();
        assert_eq!(
            (counts.targets, counts.inbound_addrs, counts.inbound_sockets),
            (1, 1, 1),
            "cycle {i}"
        );
        node.reconcile(view(Err("namespace label removed".into())));
        assert_eq!(node.report()[0].state, "not-enrolled", "cycle {i}");
    }
    eprintln!(
        "1000 cycles in {:?}, {retries} enrollments retried",
        started.elapsed()
    );
    assert!(
        retries < 100,
        "{retries} of 1000 enrollments needed a retry"
    );
    // Accept loops end asynchronously after their listeners' tasks are aborted.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(node.map_counts(), baseline, "map entries after 1000 cycles");
    let links = std::fs::read_dir(pins.path().join("links"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(links, 0, "links left pinned");
    let now = open_fds();
    assert!(
        now <= fds + 2,
        "descriptors leaked: {fds} before, {now} after"
    );
}
