//! Privileged: the agent's pin directory must be on a bpffs. Started under `ip netns exec`
//! (which remounts /sys, hiding the host's bpffs), the agent mounts one at /sys/fs/bpf; a
//! pin directory elsewhere is refused with an error that says so. Run as root through
//! `cargo xtask test`.

mod common;

use std::process::Command;

use cedille_harness::{self as h, Netns};
use common::AGENT;

#[test]
#[ignore = "privileged: run through `cargo xtask test` as root"]
fn privileged_pin_directory_off_bpffs_is_mounted_or_named() {
    h::require_privileges();
    let ns = Netns::new("bpf").unwrap();
    let object = std::env::var("CEDILLE_EBPF_OBJECT").unwrap_or_default();
    let run = |pin_dir: &str| {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns.name(),
                AGENT,
                "--check",
                "--bpf-pin-dir",
                pin_dir,
            ])
            .env("CEDILLE_EBPF_OBJECT", &object)
            .env("RUST_LOG", "info")
            .output()
            .expect("ip netns exec cedille-agent");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // Under `ip netns exec`, /sys/fs/bpf is an empty sysfs directory: the agent mounts a
    // bpffs there (in the command's own mount namespace) and goes on.
    let (ok, log) = run("/sys/fs/bpf/cedille-netns-check");
    assert!(ok, "{log}");
    assert!(log.contains("mounted one"), "{log}");
    // Elsewhere: refused, naming the directory and the filesystem it is on.
    let dir = tempfile::tempdir().unwrap();
    let pins = dir.path().join("pins");
    let (ok, log) = run(pins.to_str().unwrap());
    assert!(!ok);
    assert!(
        log.contains(&format!("{}: not on a bpffs mount", pins.display()))
            && log.contains("mount -t bpf bpf /sys/fs/bpf"),
        "{log}"
    );
    assert!(!log.contains("No such file or directory"), "{log}");
}
