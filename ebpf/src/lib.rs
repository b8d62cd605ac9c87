//! Map types shared by Cedille's eBPF programs and the agent.
//!
//! Every type is `#[repr(C)]` with explicit padding and a size assertion, so the kernel side
//! (built for `bpfel-unknown-none`) and userspace agree byte for byte. Addresses are stored as
//! `[u32; 4]` words whose in-memory bytes are the address bytes (network order), because that
//! is how the kernel's `bpf_sock_addr` and `bpf_sock_ops` contexts expose them; an IPv4 address
//! uses the first word and leaves the others zero. Ports are in host byte order.
#![no_std]

/// `AF_INET`, as stored in the `family` fields below.
pub const AF_INET: u16 = 2;
/// `AF_INET6`, as stored in the `family` fields below.
pub const AF_INET6: u16 = 10;

/// Names of the maps in the eBPF object; the agent pins them under its bpffs directory.
pub mod maps {
    /// `HashMap<u64 netns cookie, RedirectTarget>`: where to send each enrolled pod's TCP
    /// connections. A pod without an entry is not redirected.
    pub const REDIRECT_TARGETS: &str = "CEDILLE_TARGETS";
    /// `Array` of [`crate::SLOTS_PER_CPU`] scratch slots per possible CPU: written by
    /// connect4/6, moved to [`ORIGINAL_DST`] by sock_ops once the socket has its local port.
    /// The agent sizes it at load time.
    pub const CONNECTING: &str = "CEDILLE_CONNECTING";
    /// `LruHashMap<SockKey, OrigDst>`: the original destination of a redirected connection,
    /// keyed by the client's side of it, read (and removed) by the agent on accept.
    pub const ORIGINAL_DST: &str = "CEDILLE_ORIG_DST";
    /// `PerCpuArray<u64>` indexed by [`crate::Stat`].
    pub const STATS: &str = "CEDILLE_STATS";
    /// `HashMap<PodAddr, u32 slot>`: an enrolled pod's IP addresses, each naming the slot
    /// of [`INBOUND_SOCKETS`] that holds the agent's inbound listener for that pod.
    pub const INBOUND_ADDRS: &str = "CEDILLE_INBOUND";
    /// `SockMap` of the agent's inbound listeners, one slot per enrolled pod. The kernel
    /// drops a socket from it when the socket closes (the agent is down).
    pub const INBOUND_SOCKETS: &str = "CEDILLE_INBOUND_SOCKS";
    /// `Array<u32>` with one entry: [`crate::CONFIG_FAIL_OPEN`] and future flags.
    pub const CONFIG: &str = "CEDILLE_CONFIG";
}

/// [`maps::CONFIG`] flag: while the agent is down, enrolled pods' connections bypass it
/// instead of failing.
pub const CONFIG_FAIL_OPEN: u32 = 1;

/// An enrolled pod's IP address: the key of [`maps::INBOUND_ADDRS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PodAddr {
    pub addr: [u32; 4],
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u32,
}

/// Names of the programs in the eBPF object.
pub mod programs {
    pub const CONNECT4: &str = "cedille_connect4";
    pub const CONNECT6: &str = "cedille_connect6";
    pub const SOCK_OPS: &str = "cedille_sockops";
    pub const SK_LOOKUP: &str = "cedille_sk_lookup";
}

/// Capacity of the maps that hold one entry per connection being set up.
pub const CONNECTION_MAP_ENTRIES: u32 = 65_536;
/// Capacity of the per-pod map: enrolled pods on one node.
pub const TARGET_MAP_ENTRIES: u32 = 4_096;

/// Where an enrolled pod's connections are sent: the agent's outbound listener inside the
/// pod's network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedirectTarget {
    /// IPv6 destination for `connect6` (usually `::1`).
    pub ip6: [u32; 4],
    /// IPv4 destination for `connect4` and for v4-mapped `connect6` (usually 127.0.0.1).
    pub ip4: u32,
    /// Listener port, host byte order.
    pub port: u16,
    /// Reserved, zero.
    pub _pad: u16,
}

/// The destination a pod's process asked for before it was redirected.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDst {
    pub addr: [u32; 4],
    /// Host byte order.
    pub port: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
}

/// Identifies a redirected connection by its client end, as the agent sees it on accept
/// (the peer address) plus the network namespace it lives in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub netns_cookie: u64,
    pub addr: [u32; 4],
    /// Host byte order.
    pub port: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Reserved, zero: keeps the key free of uninitialised padding.
    pub _pad: u32,
}

/// Counters in the [`maps::STATS`] per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// TCP connects rewritten to the agent (v4 and v6).
    Redirected = 0,
    /// Original destinations recorded for the agent by sock_ops.
    Recorded = 1,
    /// Map updates the kernel refused (a full non-LRU map, or memory pressure).
    MapUpdateFailed = 2,
    /// Incoming connections to an enrolled pod handed to the agent's inbound listener.
    InboundRedirected = 3,
    /// Incoming connections to an enrolled pod refused because the agent was not listening
    /// (fail-closed).
    InboundRefused = 4,
    /// Connections let past the agent because it was down and the policy is fail-open.
    FailedOpen = 5,
    /// Redirected connects whose original destination was overwritten before sock_ops
    /// could record it (see [`SLOTS_PER_CPU`]); the agent closes them.
    NoteLost = 6,
}

/// Number of [`Stat`] slots.
pub const STAT_COUNT: u32 = 7;

/// Scratch slots per CPU in [`maps::CONNECTING`]: a connect that yields between its two
/// programs loses its note only if this many other connects start on that CPU meanwhile.
pub const SLOTS_PER_CPU: u32 = 16;
/// The most CPUs the programs search for a note (past the map's end they stop).
pub const MAX_CPUS: u32 = 1024;

const _: () = assert!(core::mem::size_of::<RedirectTarget>() == 24);
const _: () = assert!(core::mem::size_of::<OrigDst>() == 20);
const _: () = assert!(core::mem::size_of::<SockKey>() == 32);
const _: () = assert!(core::mem::size_of::<PodAddr>() == 20);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] structs of integers with explicit padding fields, so every bit
    // pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for super::RedirectTarget {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::PodAddr {}
}
