use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::unique_name;

/// Where cgroup v2 is mounted, read from `/proc/self/mounts` (`/sys/fs/cgroup` on a unified
/// host, `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_src, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(target))
        })
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no cgroup2 mount in /proc/self/mounts",
            )
        })
}

const PARENT: &str = "cedille-test";

/// A cgroup v2 directory under `<cgroup2 mount>/cedille-test/`, whose processes are killed
/// and which is removed on drop.
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn new(tag: &str) -> io::Result<Self> {
        let parent = cgroup2_mount()?.join(PARENT);
        fs::create_dir_all(&parent)?;
        let path = parent.join(unique_name(tag));
        fs::create_dir(&path)?;
        Ok(Self { path })
    }

    /// Creates a child cgroup (as a pod's container cgroup under the pod's), removed with
    /// its parent.
    pub fn child(&self, name: &str) -> io::Result<PathBuf> {
        let path = self.path.join(name);
        fs::create_dir(&path)?;
        Ok(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// PIDs currently in this cgroup (not its children).
    pub fn pids(&self) -> io::Result<Vec<u32>> {
        let procs = fs::read_to_string(self.path.join("cgroup.procs"))?;
        Ok(procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = remove(&self.path) {
            eprintln!("harness: removing cgroup {}: {e}", self.path.display());
        }
    }
}

/// Kills every process in the cgroup tree, then removes it bottom-up.
fn remove(path: &Path) -> io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    // cgroup.kill (Linux 5.14) kills the whole subtree at once.
    let _ = fs::write(path.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match remove_tree(path) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < deadline && e.kind() == io::ErrorKind::ResourceBusy => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

fn remove_tree(path: &Path) -> io::Result<()> {
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    fs::remove_dir(path)
}

pub(crate) fn sweep() {
    let Ok(parent) = cgroup2_mount().map(|m| m.join(PARENT)) else {
        return;
    };
    let Ok(entries) = fs::read_dir(&parent) else {
        return;
    };
    for entry in entries.flatten() {
        if crate::is_stale(&entry.file_name().to_string_lossy()) {
            let _ = remove(&entry.path());
        }
    }
}
