use std::{
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
};

use crate::unique_name;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const ROOT: &str = "/sys/fs/bpf";
const PARENT: &str = "/sys/fs/bpf/cedille-test";

fn statfs_type(path: &Path) -> io::Result<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs fills the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// Makes sure bpffs is mounted at `/sys/fs/bpf`, mounting it if not.
pub fn ensure_bpffs() -> io::Result<()> {
    let root = Path::new(ROOT);
    if statfs_type(root)? == BPF_FS_MAGIC {
        return Ok(());
    }
    let (src, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
    // SAFETY: all strings are NUL-terminated constants; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
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
