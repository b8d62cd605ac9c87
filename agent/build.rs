//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! The object needs nightly and bpf-linker, which a plain `cargo build` must not require, so
//! xtask builds it and passes its path in `CEDILLE_EBPF_OBJECT`. Without that variable the
//! agent is built with no eBPF object and says so when it starts.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=CEDILLE_EBPF_OBJECT");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dest = out.join("cedille-ebpf.o");
    match env::var_os("CEDILLE_EBPF_OBJECT") {
        Some(path) => {
            let path = PathBuf::from(path);
            println!("cargo:rerun-if-changed={}", path.display());
            fs::copy(&path, &dest).unwrap_or_else(|e| {
                panic!(
                    "CEDILLE_EBPF_OBJECT={}: {e} (build it with `cargo xtask build-ebpf`)",
                    path.display()
                )
            });
        }
        None => fs::write(&dest, b"").expect("write empty eBPF placeholder"),
    }
}
