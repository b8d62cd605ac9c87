//! cedille-agent: the node agent's library. `main.rs` is a thin wrapper, so tests drive the
//! real code in-process.

pub mod app;
pub mod cgroups;
pub mod datapath;
pub mod enroll;
pub mod identity;
pub mod mesh;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod objects;
pub mod policy;
pub mod proxy;
pub mod routing;

/// The eBPF object embedded at build time (empty when built without `cargo xtask`).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cedille-ebpf.o"));
