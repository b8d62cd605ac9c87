//! `--check-config`: the binary reads a manifest directory once, prints the status and
//! exits non-zero when a manifest is rejected (no runtime, no sockets).

mod support;

use std::process::Command;

fn check(dir: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cedille-gateway"))
        .args(["--check-config", "--config-dir"])
        .arg(dir)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_reports_the_status_and_fails_on_a_rejected_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let echo: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    std::fs::write(dir.path().join("base.yaml"), support::base(18999, echo)).unwrap();
    std::fs::write(dir.path().join("r.yaml"), support::route("r", "/")).unwrap();
    let (ok, stdout, stderr) = check(dir.path());
    assert!(ok, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).expect("the status, as JSON");
    assert!(status["httpRoutes"]["default/r"].is_object(), "{stdout}");

    std::fs::write(
        dir.path().join("bad.yaml"),
        support::route("bad", "no-slash"),
    )
    .unwrap();
    let (ok, _, stderr) = check(dir.path());
    assert!(!ok, "a rejected manifest fails the check");
    assert!(stderr.contains("bad.yaml"), "{stderr}");
}
