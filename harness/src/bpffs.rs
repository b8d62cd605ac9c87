use std::{
    fs, io,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

use crate::unique_name;

const ROOT: &str = "/sys/fs/bpf";
const PARENT: &str = "/sys/fs/bpf/cedille-test";

/// Makes sure bpffs is mounted at `/sys/fs/bpf`, mounting it if not.
pub fn ensure_bpffs() -> io::Result<()> {
    if statfs(ROOT)?.filesystem_type() == BPF_FS_MAGIC {
        return Ok(());
    }
    mount(
        Some("bpf"),
        ROOT,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )?;
    Ok(())
}

/// A fresh directory on bpffs for one test's pins; removed with everything in it on drop,
/// which unpins (and so detaches) whatever the test left pinned.
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    pub fn new() -> io::Result<Self> {
        ensure_bpffs()?;
        let path = Path::new(PARENT).join(unique_name("pin"));
        fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of pinned objects (maps, links, programs) below this directory.
    pub fn pinned(&self) -> io::Result<usize> {
        fn count(dir: &Path) -> io::Result<usize> {
            let mut n = 0;
            for entry in fs::read_dir(dir)? {
                let entry = entry?;
                n += if entry.file_type()?.is_dir() {
                    count(&entry.path())?
                } else {
                    1
                };
            }
            Ok(n)
        }
        count(&self.path)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("harness: removing pin dir {}: {e}", self.path.display());
        }
    }
}

pub(crate) fn sweep() {
    let Ok(entries) = fs::read_dir(PARENT) else {
        return;
    };
    for entry in entries.flatten() {
        if crate::is_stale(&entry.file_name().to_string_lossy()) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
