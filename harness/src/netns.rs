use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};

use crate::{cmd::ip, unique_name};

/// A named network namespace (`ip netns add`), deleted on drop. Its loopback is up.
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    pub fn new(tag: &str) -> io::Result<Self> {
        let name = unique_name(tag);
        ip(&["netns", "add", &name])?;
        let ns = Self {
            path: Path::new("/run/netns").join(&name),
            name,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, usable with `setns`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `ip -n <name> ARGS...`.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Adds an address (`10.0.0.1/24`, `fd00::1/64`) to an interface in this namespace and
    /// brings it up. IPv6 duplicate address detection is skipped so the address is usable at
    /// once.
    pub fn addr(&self, dev: &str, cidr: &str) -> io::Result<()> {
        let mut args = vec!["addr", "add", cidr, "dev", dev];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(&args)?;
        self.ip(&["link", "set", dev, "up"])?;
        Ok(())
    }

    /// Runs `f` on a thread inside this namespace and returns its result. Sockets it creates
    /// stay in this namespace.
    pub fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> io::Result<T> {
        let file = File::open(&self.path)?;
        std::thread::scope(|s| {
            s.spawn(move || {
                // Affects only this scoped thread.
                setns(&file, CloneFlags::CLONE_NEWNET)?;
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("closure in network namespace panicked"))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("harness: removing netns {}: {e}", self.name);
        }
    }
}

/// A veth pair: `a` in namespace `ns_a` and `b` in `ns_b` (`None` is the test's own namespace).
/// Returns the two interface names. Deleting either namespace deletes the pair.
pub fn veth_pair(ns_a: Option<&Netns>, ns_b: Option<&Netns>) -> io::Result<(String, String)> {
    let a = unique_name("va");
    let b = unique_name("vb");
    ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
    let guard = LinkGuard(a.clone());
    for (dev, ns) in [(&a, ns_a), (&b, ns_b)] {
        if let Some(ns) = ns {
            ip(&["link", "set", dev, "netns", ns.name()])?;
            ns.ip(&["link", "set", dev, "up"])?;
        } else {
            ip(&["link", "set", dev, "up"])?;
        }
    }
    std::mem::forget(guard);
    Ok((a, b))
}

/// Deletes a link in the test's namespace unless forgotten.
struct LinkGuard(String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.0]);
    }
}

/// A bridge in a namespace (or the test's own), deleted on drop.
pub struct Bridge<'a> {
    name: String,
    ns: Option<&'a Netns>,
}

impl<'a> Bridge<'a> {
    pub fn new(ns: Option<&'a Netns>) -> io::Result<Self> {
        let name = unique_name("br");
        let run = |args: &[&str]| match ns {
            Some(ns) => ns.ip(args),
            None => ip(args),
        };
        run(&["link", "add", &name, "type", "bridge"])?;
        run(&["link", "set", &name, "up"])?;
        Ok(Self { name, ns })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Enslaves `dev` (in the bridge's namespace) to the bridge.
    pub fn add(&self, dev: &str) -> io::Result<()> {
        let args = ["link", "set", dev, "master", self.name.as_str()];
        match self.ns {
            Some(ns) => ns.ip(&args),
            None => ip(&args),
        }
        .map(drop)
    }
}

impl Drop for Bridge<'_> {
    fn drop(&mut self) {
        let args = ["link", "del", self.name.as_str()];
        let _ = match self.ns {
            Some(ns) => ns.ip(&args),
            None => ip(&args),
        };
    }
}

pub(crate) fn sweep() {
    if let Ok(list) = ip(&["netns", "list"]) {
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if crate::is_stale(name) {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(list) = ip(&["-o", "link", "show"]) {
        for line in list.lines() {
            // "7: cdl123va4@cdl123vb5: <...>"
            let name = line.split(':').nth(1).unwrap_or_default().trim();
            let name = name.split('@').next().unwrap_or_default();
            if crate::is_stale(name) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}
