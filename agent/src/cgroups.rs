//! Finding a pod on the node the way the kubelet lays it out: its cgroup v2 directory is
//! named after its UID (`pod<uid>` with the cgroupfs driver,
//! `kubepods-<qos>-pod<uid with _ for ->.slice` with the systemd driver), and its network
//! namespace is the one its processes are in.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// How deep under the cgroup root a pod directory may be (kubepods/burstable/pod<uid>).
const MAX_DEPTH: usize = 6;

/// Whether a cgroup directory name is the pod with `uid`'s.
pub fn is_pod_dir(name: &str, uid: &str) -> bool {
    if name == format!("pod{uid}") {
        return true;
    }
    let systemd = format!("-pod{}.slice", uid.replace('-', "_"));
    name.ends_with(&systemd)
}

/// The cgroup directory of the pod with `uid` under `root`, if it exists yet.
pub fn find_pod_cgroup(root: &Path, uid: &str) -> Option<PathBuf> {
    fn walk(dir: &Path, uid: &str, depth: usize) -> Option<PathBuf> {
        let entries = fs::read_dir(dir).ok()?;
        let mut subdirs = Vec::new();
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name();
            let name = name.to_string_lossy();
            if is_pod_dir(&name, uid) {
                return Some(e.path());
            }
            // Pod directories never nest inside another pod's.
            if depth < MAX_DEPTH && !name.starts_with("pod") && !name.contains("-pod") {
                subdirs.push(e.path());
            }
        }
        subdirs.into_iter().find_map(|d| walk(&d, uid, depth + 1))
    }
    walk(root, uid, 0)
}

/// A process in the cgroup at `dir` or one of its descendants (the pod's containers).
pub fn any_pid(dir: &Path) -> io::Result<Option<u32>> {
    let procs = fs::read_to_string(dir.join("cgroup.procs"))?;
    if let Some(pid) = procs.lines().find_map(|l| l.trim().parse().ok()) {
        return Ok(Some(pid));
    }
    for e in fs::read_dir(dir)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir())
            && let Ok(Some(pid)) = any_pid(&e.path())
        {
            return Ok(Some(pid));
        }
    }
    Ok(None)
}

/// Opens the network namespace of the processes in the pod cgroup at `dir`.
pub fn pod_netns(dir: &Path) -> io::Result<fs::File> {
    let pid = any_pid(dir)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no process in {} yet", dir.display()),
        )
    })?;
    fs::File::open(format!("/proc/{pid}/ns/net"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_both_cgroup_drivers() {
        let uid = "0f1e2d3c-aaaa-bbbb-cccc-123456789abc";
        assert!(is_pod_dir(&format!("pod{uid}"), uid));
        assert!(is_pod_dir(
            "kubepods-burstable-pod0f1e2d3c_aaaa_bbbb_cccc_123456789abc.slice",
            uid
        ));
        assert!(!is_pod_dir(&format!("pod{uid}x"), uid));
        assert!(!is_pod_dir("kubepods-burstable.slice", uid));
    }

    #[test]
    fn finds_a_nested_pod_directory() {
        let root = std::env::temp_dir().join(format!("cedille-cg-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let pod = root.join("kubepods/burstable/podabc-1");
        fs::create_dir_all(pod.join("ctr")).unwrap();
        fs::create_dir_all(root.join("kubepods/besteffort/podother")).unwrap();
        assert_eq!(find_pod_cgroup(&root, "abc-1"), Some(pod));
        assert_eq!(find_pod_cgroup(&root, "missing"), None);
        fs::remove_dir_all(&root).unwrap();
    }
}
