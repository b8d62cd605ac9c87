//! HTTP/2 abuse from a raw-frame client (Python, hyperframe + hpack: h2's own packages,
//! no code shared with the gateway): each flood (rapid reset, CONTINUATION, empty DATA, an
//! oversized header list, SETTINGS, PING) ends in a GOAWAY with ENHANCE_YOUR_CALM, a normal
//! client keeps being served meanwhile, and memory comes back.

mod support;

use std::{path::Path, process::Command, time::Duration};

use bytes::Bytes;
use support::{Conn, Env, route};

const ENHANCE_YOUR_CALM: u64 = 0xb;

fn python() -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run scripts/setup.sh (it installs h2, whose hyperframe and hpack the abuse client uses)",
        p.display()
    );
    p
}

fn abuse(addr: std::net::SocketAddr, mode: &str, count: &str) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/h2abuse/abuse.py");
    let out = Command::new(python())
        .arg(script)
        .args([&addr.to_string(), mode, count])
        .output()
        .expect("run the abuse client");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{mode}: no JSON: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_floods_end_in_goaway_and_leave_nothing_behind() {
    let env = Env::start(&[("r.yaml", &route("r", "/"))], |_| {}).await;
    let addr = env.addr();
    let mut normal = Conn::open(addr).await.unwrap();
    let ok = |s: u16| assert_eq!(s, 200);
    ok(normal
        .request("GET", "/warm", &[], Bytes::new())
        .await
        .unwrap()
        .0);
    // Warm up once so first-use allocations are not counted against the floods.
    tokio::task::spawn_blocking(move || abuse(addr, "rapid_reset", "2000"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss_kib();
    for (mode, count) in [
        // CVE-2023-44487: HEADERS then RST_STREAM, over and over.
        ("rapid_reset", "20000"),
        // CVE-2024-27316 and friends: an endless header block.
        ("continuation", "20000"),
        // Empty DATA frames (CVE-2019-9518).
        ("empty_data", "20000"),
        // A header list far over the limit.
        ("big_headers", "200"),
        // Control frames the server must answer, far faster than any client sends them.
        ("settings", "20000"),
        ("ping", "20000"),
    ] {
        let r = tokio::task::spawn_blocking(move || abuse(addr, mode, count))
            .await
            .unwrap();
        assert_eq!(r["result"], "goaway", "{mode}: {r}");
        assert_eq!(r["code"], ENHANCE_YOUR_CALM, "{mode}: {r}");
        // The normal client, on its own connection, is still served.
        ok(normal
            .request("GET", "/normal", &[], Bytes::new())
            .await
            .unwrap()
            .0);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib();
    assert!(
        after <= baseline + baseline / 10,
        "memory grew from {baseline} KiB to {after} KiB"
    );
    // Nothing of the floods reached the backend.
    let seen = env.echo.seen();
    assert!(
        seen.iter()
            .all(|p| p == "/warm" || p == "/normal" || p == "/"),
        "{seen:?}"
    );
}
