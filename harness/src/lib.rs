//! Cedille's privileged test harness: network namespaces, veth pairs, bridges, cgroup v2
//! directories and bpffs pin directories that clean themselves up, and a way to run a closure
//! or a process inside them.
//!
//! Every object is named `cdl<pid>…` so that [`sweep`] can remove what a killed test run left
//! behind. Tests call [`require_privileges`] first: it fails loudly (never skips) when the
//! machine cannot run them.

mod bpffs;
mod cgroup;
mod cmd;
mod http;
mod netns;
mod process;

pub use bpffs::{PinDir, ensure_bpffs};
pub use cgroup::{Cgroup, cgroup2_mount};
pub use cmd::{ip, run};
pub use http::http_get;
pub use netns::{Bridge, Netns, veth_pair};
pub use process::{Background, Output, run_in, spawn_in};

use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short unique name (at most 15 bytes, so it also fits an interface name).
pub(crate) fn unique_name(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tag: String = tag
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(3)
        .collect();
    format!("cdl{}{tag}{n}", std::process::id() % 100_000)
}

/// Panics with an actionable message unless this process can run privileged tests: root,
/// a cgroup v2 mount, bpffs mounted (mounting it if needed) and the `ip` tool. Also removes
/// leftovers of earlier runs that were killed.
pub fn require_privileges() {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "privileged test needs root (euid is {euid}); run `sudo -E cargo xtask test`"
    );
    if let Err(e) = cgroup2_mount() {
        panic!("privileged test needs a cgroup v2 mount: {e}");
    }
    if let Err(e) = ensure_bpffs() {
        panic!("privileged test needs bpffs at /sys/fs/bpf: {e}");
    }
    if let Err(e) = run("ip", &["-V"]) {
        panic!("privileged test needs iproute2's `ip` (apt-get install iproute2): {e}");
    }
    sweep();
}

/// Removes namespaces, cgroups and pin directories left by test processes that no longer
/// exist. Errors are ignored: this is best effort before a test starts.
pub fn sweep() {
    netns::sweep();
    cgroup::sweep();
    bpffs::sweep();
}

/// Whether a harness object name belongs to a process that is gone.
pub(crate) fn is_stale(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("cdl") else {
        return false;
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let Ok(pid) = digits.parse::<u32>() else {
        return false;
    };
    let me = std::process::id() % 100_000;
    if pid == me {
        return false;
    }
    // Names hold the pid modulo 100000; any live process with that remainder keeps it.
    !std::fs::read_dir("/proc")
        .map(|entries| {
            entries.flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                    .is_some_and(|p| p % 100_000 == pid)
            })
        })
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_an_interface_name_and_are_unique() {
        let a = unique_name("veth");
        let b = unique_name("veth");
        assert_ne!(a, b);
        assert!(a.len() <= 15, "{a}");
        assert!(!is_stale(&a), "own names are never stale");
        assert!(!is_stale("eth0"));
    }
}
