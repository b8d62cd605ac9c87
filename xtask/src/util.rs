use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, bail};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_owned()
}

/// A command to run from the workspace root, echoed before it runs.
pub struct Cmd(Command);

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>, args: &[&str]) -> Self {
        let mut c = Command::new(program);
        c.args(args)
            .current_dir(root())
            .stdin(std::process::Stdio::null());
        Self(c)
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.0.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: &str) -> Self {
        self.0.env_remove(key);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.0.current_dir(dir);
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.0.args(args);
        self
    }

    /// Runs a `cargo test` command, echoing its output, and adds up its `test result:` lines.
    pub fn run_tests(mut self, totals: &mut TestTotals) -> anyhow::Result<()> {
        use std::io::{BufRead, BufReader};
        let shown = format!("{:?}", self.0).replace('"', "");
        eprintln!("xtask: $ {shown}");
        let mut child = self
            .0
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {shown}"))?;
        let stdout = child.stdout.take().expect("piped");
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            totals.add(&line);
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("{shown} failed ({status})");
        }
        Ok(())
    }

    pub fn run(mut self) -> anyhow::Result<()> {
        let shown = format!("{:?}", self.0).replace('"', "");
        eprintln!("xtask: $ {shown}");
        let start = Instant::now();
        let status = self
            .0
            .status()
            .with_context(|| format!("starting {shown}"))?;
        if !status.success() {
            bail!("{shown} failed ({status})");
        }
        eprintln!("xtask: ok in {:.1}s", start.elapsed().as_secs_f64());
        Ok(())
    }
}

/// The stable cargo that runs xtask.
pub fn cargo(args: &[&str]) -> Cmd {
    Cmd::new(
        std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()),
        args,
    )
}

/// Cargo of the nightly toolchain scripts/setup.sh prepared (`CEDILLE_NIGHTLY`, as there;
/// `nightly` by default).
pub fn nightly_cargo(args: &[&str]) -> Cmd {
    let nightly = std::env::var("CEDILLE_NIGHTLY").unwrap_or_else(|_| "nightly".into());
    let mut cmd = Cmd::new("rustup", &["run", &nightly, "cargo"]).args(args);
    // The stable cargo running xtask exports variables that would pin the nested build to
    // the stable toolchain or the host's flags.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTDOC",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd = cmd.env_remove(var);
    }
    cmd
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Sums of libtest's `test result: ok. 3 passed; 0 failed; 1 ignored; ...` lines.
#[derive(Default, Debug)]
pub struct TestTotals {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl TestTotals {
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_read_libtest_summaries() {
        let mut t = TestTotals::default();
        t.add("test result: ok. 6 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.00s");
        t.add("test result: FAILED. 1 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out");
        t.add("test something ... ok");
        assert_eq!((t.passed, t.failed, t.ignored), (7, 3, 2));
    }
}
