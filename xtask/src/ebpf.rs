use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::util::{nightly_cargo, root};

/// Environment variable through which agent/build.rs receives the object.
pub const OBJECT_ENV: &str = "CEDILLE_EBPF_OBJECT";
const TARGET: &str = "bpfel-unknown-none";

/// Builds the eBPF programs with nightly for `bpfel-unknown-none`, linked by bpf-linker, into
/// `target/ebpf`, and returns the object's path.
pub fn build() -> anyhow::Result<PathBuf> {
    let target_dir = root().join("target").join("ebpf");
    let target_dir_s = target_dir.to_str().context("non-UTF-8 workspace path")?;
    let cmd = nightly_cargo(&[
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
    ]);
    cmd.run().context(
        "building the eBPF programs needs nightly with rust-src and bpf-linker: run scripts/setup.sh",
    )?;
    let obj = target_dir.join(TARGET).join("release").join("cedille-ebpf");
    if !obj.is_file() {
        bail!("eBPF build succeeded but {} is missing", obj.display());
    }
    Ok(obj)
}
