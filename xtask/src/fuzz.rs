//! `cargo xtask fuzz`: each of the gateway's fuzz targets (`gateway/fuzz`, cargo-fuzz on
//! nightly) for a short while, from its seeds and past findings. A crash fails the run and
//! leaves the input in `gateway/fuzz/artifacts/<target>/`; once fixed it belongs in
//! `gateway/fuzz/regressions/<target>/`, which the unit tests replay.

use anyhow::Context;
use clap::Args as ClapArgs;

use crate::util::{nightly_cargo, root};

pub const TARGETS: &[&str] = &["manifest", "request"];

#[derive(ClapArgs, Default)]
pub struct Args {
    /// Seconds per target.
    #[arg(long, default_value_t = 30)]
    pub seconds: u32,
    /// Only this target.
    #[arg(long)]
    pub target: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let fuzz_dir = root().join("gateway/fuzz");
    // Coverage-guided without a sanitizer: the gateway's code is safe Rust, and the
    // sanitizers would rebuild the C of the crypto library for little gain.
    let common = ["fuzz", "run", "--sanitizer", "none", "--release"];
    for target in TARGETS {
        if args.target.as_deref().is_some_and(|t| t != *target) {
            continue;
        }
        // The corpus grows under target/ (not committed); seeds and regressions are read.
        let corpus = root().join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("{}", corpus.display()))?;
        let mut cmd = nightly_cargo(&common).args(&[target, &corpus.to_string_lossy()]);
        for dir in ["seeds", "regressions"] {
            let d = fuzz_dir.join(dir).join(target);
            if d.is_dir() {
                cmd = cmd.args(&[&d.to_string_lossy()]);
            }
        }
        let time = format!("-max_total_time={}", args.seconds);
        cmd.current_dir(&fuzz_dir)
            .args(&["--", &time, "-timeout=10", "-print_final_stats=1"])
            .run()
            .with_context(|| {
                format!(
                    "fuzz target {target} failed: the input is in gateway/fuzz/artifacts/{target}/"
                )
            })?;
    }
    Ok(())
}
