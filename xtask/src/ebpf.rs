use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::util::{Cmd, root};

/// Environment variable through which agent/build.rs receives the object.
pub const OBJECT_ENV: &str = "CEDILLE_EBPF_OBJECT";
const TARGET: &str = "bpfel-unknown-none";

/// Builds the eBPF programs with nightly for `bpfel-unknown-none`, linked by bpf-linker, into
/// `target/ebpf`, and returns the object's path.
pub fn build() -> anyhow::Result<PathBuf> {
    let target_dir = root().join("target").join("ebpf");
    let target_dir_s = target_dir.to_str().context("non-UTF-8 workspace path")?;
    // The nightly scripts/setup.sh prepared (CEDILLE_NIGHTLY, as there; `nightly` by default).
    let nightly = std::env::var("CEDILLE_NIGHTLY").unwrap_or_else(|_| "nightly".into());
    let mut cmd = Cmd::new(
        "rustup",
        &[
            "run",
            &nightly,
            "cargo",
            "build",
            "--package",
            "cedille-ebpf",
            "--bin",
            "cedille-ebpf",
            "--target",
            TARGET,
            "-Z",
            "build-std=core",
            "--release",
            "--target-dir",
            target_dir_s,
        ],
    );
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
    cmd.run().context(
        "building the eBPF programs needs nightly with rust-src and bpf-linker: run scripts/setup.sh",
    )?;
    let obj = target_dir.join(TARGET).join("release").join("cedille-ebpf");
    if !obj.is_file() {
        bail!("eBPF build succeeded but {} is missing", obj.display());
    }
    Ok(obj)
}
