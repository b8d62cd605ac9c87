use std::{
    fs::{File, OpenOptions},
    io::{self, Read},
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sched::{CloneFlags, setns},
    sys::signal::{Signal, killpg},
    unistd::{Pid, write},
};

use crate::Netns;

/// What a process run by [`run_in`] did.
#[derive(Debug)]
pub struct Output {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    /// The process outlived its deadline and was killed.
    pub timed_out: bool,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Makes `cmd` join `netns` and `cgroup` (either optional) before `exec`. The descriptors
/// live in the hook, so they stay open until the process is spawned.
fn enter(netns: Option<&Netns>, cgroup: Option<&Path>, cmd: &mut Command) -> io::Result<()> {
    let ns_file = netns.map(|ns| File::open(ns.path())).transpose()?;
    let procs = cgroup
        .map(|cg| OpenOptions::new().write(true).open(cg.join("cgroup.procs")))
        .transpose()?;
    // SAFETY: `pre_exec` is unsafe because the closure runs between fork and exec, where
    // only async-signal-safe calls are allowed; nix has no safe form of it. The closure makes
    // only thin system-call wrappers (write(2), setns(2), no allocation: errors become
    // `io::Error::from_raw_os_error`) on descriptors opened beforehand.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &procs {
                // Writing "0" moves the writing process itself.
                if write(procs, b"0")? != 1 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
            }
            if let Some(ns) = &ns_file {
                setns(ns, CloneFlags::CLONE_NEWNET)?;
            }
            Ok(())
        });
    }
    Ok(())
}

/// Runs `cmd` inside the network namespace `netns` and the cgroup `cgroup` (either optional),
/// killing it after `timeout`. The process joins both before `exec`, so everything it does,
/// from its first instruction, happens there.
pub fn run_in(
    netns: Option<&Netns>,
    cgroup: Option<&Path>,
    mut cmd: Command,
    timeout: Duration,
) -> io::Result<Output> {
    enter(netns, cgroup, &mut cmd)?;
    // Its own process group, so a timeout kills its children too (they hold the pipes).
    cmd.process_group(0);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out_pipe.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            timed_out = true;
            // The child leads the process group we created for it.
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    Ok(Output {
        status,
        stdout,
        stderr,
        timed_out,
    })
}

/// A process started by [`spawn_in`], killed (with its process group) when dropped.
pub struct Background {
    child: std::process::Child,
}

impl Background {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        // The child leads the process group created for it.
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `cmd` in the background inside `netns` and `cgroup` (either optional), its output
/// going where `cmd` says (inherited by default).
pub fn spawn_in(
    netns: Option<&Netns>,
    cgroup: Option<&Path>,
    mut cmd: Command,
) -> io::Result<Background> {
    enter(netns, cgroup, &mut cmd)?;
    cmd.process_group(0).stdin(Stdio::null());
    Ok(Background {
        child: cmd.spawn()?,
    })
}
