//! Outbound capture: `connect4`/`connect6` send an enrolled pod's TCP connections to the agent
//! and note where they were going in a per-CPU scratch slot; `sock_ops`, which runs later in
//! the same connect() call once the kernel has picked the local port, moves that note into a
//! map keyed by the client's local address, which is what the agent sees on accept.
//!
//! The scratch slots keep the connect programs free of map updates (an LRU hash insert costs
//! more than the rest of the program, socket storage costs two allocations). connect() can
//! yield between the two programs (the port search reschedules) and even move to another
//! CPU, so each CPU has [`SLOTS_PER_CPU`] slots chosen by the socket cookie, and sock_ops
//! searches the other CPUs when its own slot holds another socket's note.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_SOCK_OPS_TCP_CONNECT_CB,
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock_tuple},
    helpers::{
        bpf_get_netns_cookie, bpf_get_smp_processor_id, bpf_get_socket_cookie, bpf_sk_lookup_tcp,
        bpf_sk_release,
    },
    macros::{cgroup_sock_addr, map, sk_lookup, sock_ops},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, SockMap},
    programs::{SkLookupContext, SockAddrContext, SockOpsContext},
};
use cedille_ebpf::{
    AF_INET, AF_INET6, CONFIG_FAIL_OPEN, CONNECTION_MAP_ENTRIES, MAX_CPUS, OrigDst, PodAddr,
    RedirectTarget, SLOTS_PER_CPU, STAT_COUNT, SockKey, Stat, TARGET_MAP_ENTRIES,
};

const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
/// Return values of cgroup sock_addr programs.
const ALLOW: i32 = 1;
const DENY: i32 = 0;

#[map(name = "CEDILLE_TARGETS")]
static TARGETS: HashMap<u64, RedirectTarget> = HashMap::pinned(TARGET_MAP_ENTRIES, 0);

/// A connect in progress: the socket's cookie and where it was going.
#[repr(C)]
#[derive(Clone, Copy)]
struct Connecting {
    cookie: u64,
    orig: OrigDst,
    _pad: u32,
}

/// `SLOTS_PER_CPU` slots per possible CPU (the agent sizes the map at load time).
#[map(name = "CEDILLE_CONNECTING")]
static CONNECTING: Array<Connecting> = Array::pinned(SLOTS_PER_CPU * 64, 0);

#[map(name = "CEDILLE_ORIG_DST")]
static ORIG_DST: LruHashMap<SockKey, OrigDst> = LruHashMap::pinned(CONNECTION_MAP_ENTRIES, 0);

#[map(name = "CEDILLE_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(STAT_COUNT, 0);

#[map(name = "CEDILLE_INBOUND")]
static INBOUND: HashMap<PodAddr, u32> = HashMap::pinned(TARGET_MAP_ENTRIES, 0);

#[map(name = "CEDILLE_INBOUND_SOCKS")]
static INBOUND_SOCKS: SockMap = SockMap::pinned(TARGET_MAP_ENTRIES, 0);

#[map(name = "CEDILLE_CONFIG")]
static CONFIG: Array<u32> = Array::pinned(1, 0);

/// Return values of sk_lookup programs.
const SK_PASS: u32 = 1;
const SK_DROP: u32 = 0;
/// The loopback interface: connections the pod (or the agent, from inside the pod's
/// namespace) makes to itself.
const LOOPBACK_IFINDEX: u32 = 1;

#[inline(always)]
fn fail_open() -> bool {
    CONFIG.get(0).is_some_and(|f| f & CONFIG_FAIL_OPEN != 0)
}

#[inline(always)]
fn count(stat: Stat) {
    if let Some(slot) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Loopback destinations stay inside the pod: the pod talking to itself is not meshed.
#[inline(always)]
fn is_loopback4(addr: u32) -> bool {
    u32::from_be(addr) >> 24 == 127
}

#[inline(always)]
fn is_v4_mapped(addr: &[u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && u32::from_be(addr[2]) == 0xffff
}

#[inline(always)]
fn is_loopback6(addr: &[u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == 0 && u32::from_be(addr[3]) == 1
}

/// Looks up the pod's redirect target; `None` for sockets that are not TCP or whose network
/// namespace has no target (not enrolled, or being un-enrolled).
#[inline(always)]
fn target_for(ctx: &SockAddrContext) -> Option<RedirectTarget> {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands us a valid context for the whole program run.
    let (ty, proto) = unsafe { ((*sa).type_, (*sa).protocol) };
    if ty != SOCK_STREAM || proto != IPPROTO_TCP {
        return None;
    }
    // SAFETY: helper call with the program's own context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    unsafe { TARGETS.get(&netns) }.copied()
}

/// The slot of socket `cookie` among `cpu`'s.
#[inline(always)]
fn slot_index(cpu: u32, cookie: u64) -> u32 {
    cpu * SLOTS_PER_CPU + (cookie % SLOTS_PER_CPU as u64) as u32
}

/// Notes the original destination for sock_ops. Failing to note it would hand the agent a
/// connection it cannot route, so the connect is refused instead.
#[inline(always)]
fn remember(ctx: &SockAddrContext, orig: &OrigDst) -> bool {
    // SAFETY: helper calls with the program's own context.
    let (cpu, cookie) = unsafe {
        (
            bpf_get_smp_processor_id(),
            bpf_get_socket_cookie(ctx.as_ptr()),
        )
    };
    let Some(slot) = CONNECTING.get_ptr_mut(slot_index(cpu, cookie)) else {
        count(Stat::MapUpdateFailed);
        return false;
    };
    // SAFETY: a slot of an array map; the cookie goes last and is cleared first, so a reader
    // on another CPU that sees this socket's cookie before and after reading the
    // destination has read this socket's destination.
    unsafe {
        write_volatile(addr_of_mut!((*slot).cookie), 0);
        write_volatile(addr_of_mut!((*slot).orig), *orig);
        write_volatile(addr_of_mut!((*slot).cookie), cookie);
    }
    count(Stat::Redirected);
    true
}

/// The note in slot `index` if it is socket `cookie`'s.
#[inline(always)]
fn read_note(index: u32, cookie: u64) -> Option<OrigDst> {
    let slot = CONNECTING.get_ptr(index)?;
    // SAFETY: a slot of an array map, read field by field (see `remember`).
    unsafe {
        if read_volatile(addr_of!((*slot).cookie)) != cookie {
            return None;
        }
        let orig = read_volatile(addr_of!((*slot).orig));
        (read_volatile(addr_of!((*slot).cookie)) == cookie).then_some(orig)
    }
}

/// The note for socket `cookie` in another CPU's slots: connect() moved between CPUs.
#[inline(always)]
fn search_other_cpus(cpu: u32, cookie: u64) -> Option<OrigDst> {
    let mut other = 0;
    while other < MAX_CPUS {
        if other != cpu {
            let index = slot_index(other, cookie);
            // Past the end of the map: no more CPUs.
            CONNECTING.get_ptr(index)?;
            if let Some(orig) = read_note(index, cookie) {
                return Some(orig);
            }
        }
        other += 1;
    }
    None
}

/// Whether this connecting socket is headed for its pod's agent, i.e. was redirected.
#[inline(always)]
fn headed_for_agent(ctx: &SockOpsContext) -> bool {
    // SAFETY: helper call with the program's own context; the value is copied out.
    let target = unsafe { TARGETS.get(&bpf_get_netns_cookie(ctx.as_ptr())) }.copied();
    let Some(target) = target else {
        return false;
    };
    // SAFETY: valid context, read with a 32-bit load; the port is in network byte order
    // in the low 16 bits.
    let port = unsafe { read_volatile(addr_of!((*ctx.ops).remote_port)) } as u16;
    u16::from_be(port) == target.port
}

/// Whether the agent's outbound listener exists in this socket's network namespace (only
/// asked under the fail-open policy: the lookup costs more than the rest of the program).
#[inline(always)]
fn agent_listening(ctx: &SockAddrContext, target: &RedirectTarget, v6: bool) -> bool {
    // SAFETY: a zeroed tuple is valid; the helper reads `size` bytes of it and returns a
    // socket reference that is released at once.
    unsafe {
        let mut tuple: bpf_sock_tuple = core::mem::zeroed();
        let size = if v6 {
            tuple.__bindgen_anon_1.ipv6.daddr = target.ip6;
            tuple.__bindgen_anon_1.ipv6.dport = target.port.to_be();
            core::mem::size_of_val(&tuple.__bindgen_anon_1.ipv6)
        } else {
            tuple.__bindgen_anon_1.ipv4.daddr = target.ip4;
            tuple.__bindgen_anon_1.ipv4.dport = target.port.to_be();
            core::mem::size_of_val(&tuple.__bindgen_anon_1.ipv4)
        };
        let sk = bpf_sk_lookup_tcp(
            ctx.as_ptr(),
            &mut tuple,
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        );
        if sk.is_null() {
            return false;
        }
        bpf_sk_release(sk.cast());
        true
    }
}

#[cgroup_sock_addr(connect4)]
pub fn cedille_connect4(ctx: SockAddrContext) -> i32 {
    let Some(target) = target_for(&ctx) else {
        return ALLOW;
    };
    let sa = ctx.sock_addr;
    // SAFETY: valid context; ctx fields must be read and written with 32-bit accesses.
    unsafe {
        let ip = read_volatile(addr_of!((*sa).user_ip4));
        if is_loopback4(ip) {
            return ALLOW;
        }
        let port = u16::from_be(read_volatile(addr_of!((*sa).user_port)) as u16);
        let orig = OrigDst {
            addr: [ip, 0, 0, 0],
            port,
            family: AF_INET,
        };
        if fail_open() && !agent_listening(&ctx, &target, false) {
            count(Stat::FailedOpen);
            return ALLOW;
        }
        if !remember(&ctx, &orig) {
            return DENY;
        }
        write_volatile(addr_of_mut!((*sa).user_ip4), target.ip4);
        write_volatile(addr_of_mut!((*sa).user_port), target.port.to_be() as u32);
    }
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn cedille_connect6(ctx: SockAddrContext) -> i32 {
    let Some(target) = target_for(&ctx) else {
        return ALLOW;
    };
    let sa = ctx.sock_addr;
    // SAFETY: valid context; ctx fields must be read and written with 32-bit accesses.
    unsafe {
        let ip6 = addr_of_mut!((*sa).user_ip6) as *mut u32;
        let ip = [
            read_volatile(ip6),
            read_volatile(ip6.add(1)),
            read_volatile(ip6.add(2)),
            read_volatile(ip6.add(3)),
        ];
        let port = u16::from_be(read_volatile(addr_of!((*sa).user_port)) as u16);
        // A v4-mapped destination is an IPv4 connection made from an IPv6 socket: record and
        // redirect it as IPv4, so the agent sees the same thing as for connect4.
        let mapped = is_v4_mapped(&ip);
        if (mapped && is_loopback4(ip[3])) || is_loopback6(&ip) {
            return ALLOW;
        }
        let orig = if mapped {
            OrigDst {
                addr: [ip[3], 0, 0, 0],
                port,
                family: AF_INET,
            }
        } else {
            OrigDst {
                addr: ip,
                port,
                family: AF_INET6,
            }
        };
        if fail_open() && !agent_listening(&ctx, &target, !mapped) {
            count(Stat::FailedOpen);
            return ALLOW;
        }
        if !remember(&ctx, &orig) {
            return DENY;
        }
        let new = if mapped {
            [0, 0, 0xffff_u32.to_be(), target.ip4]
        } else {
            target.ip6
        };
        write_volatile(ip6, new[0]);
        write_volatile(ip6.add(1), new[1]);
        write_volatile(ip6.add(2), new[2]);
        write_volatile(ip6.add(3), new[3]);
        write_volatile(addr_of_mut!((*sa).user_port), target.port.to_be() as u32);
    }
    ALLOW
}

#[sock_ops]
pub fn cedille_sockops(ctx: SockOpsContext) -> u32 {
    // TCP_CONNECT_CB runs after the local port is bound and before the SYN leaves, so the
    // entry exists before the agent can accept the connection.
    // SAFETY: valid context, read with a 32-bit load.
    let op = unsafe { read_volatile(addr_of!((*ctx.ops).op)) };
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        record(&ctx);
    }
    0
}

#[inline(always)]
fn record(ctx: &SockOpsContext) {
    // SAFETY: helper calls with the program's own context.
    let (cpu, cookie) = unsafe {
        (
            bpf_get_smp_processor_id(),
            bpf_get_socket_cookie(ctx.as_ptr()),
        )
    };
    let orig = match read_note(slot_index(cpu, cookie), cookie) {
        Some(orig) => orig,
        // Not redirected (loopback, fail-open bypass): nothing to record.
        None if !headed_for_agent(ctx) => return,
        None => match search_other_cpus(cpu, cookie) {
            Some(orig) => orig,
            None => {
                // Overwritten by later connects while this one waited: the agent will
                // close the connection for want of a destination.
                count(Stat::NoteLost);
                return;
            }
        },
    };
    // SAFETY: helper call with the program's own context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let ops = ctx.ops;
    // SAFETY: valid context. The verifier only accepts 32-bit loads at constant offsets from
    // the context pointer, so arrays are read word by word and never copied whole.
    let key = unsafe {
        let port = read_volatile(addr_of!((*ops).local_port)) as u16;
        let family = read_volatile(addr_of!((*ops).family));
        let remote6 = addr_of!((*ops).remote_ip6) as *const u32;
        let remote_mapped = read_volatile(remote6) == 0
            && read_volatile(remote6.add(1)) == 0
            && u32::from_be(read_volatile(remote6.add(2))) == 0xffff;
        if family == AF_INET as u32 || remote_mapped {
            SockKey {
                netns_cookie,
                addr: [read_volatile(addr_of!((*ops).local_ip4)), 0, 0, 0],
                port,
                family: AF_INET,
                _pad: 0,
            }
        } else {
            let local6 = addr_of!((*ops).local_ip6) as *const u32;
            SockKey {
                netns_cookie,
                addr: [
                    read_volatile(local6),
                    read_volatile(local6.add(1)),
                    read_volatile(local6.add(2)),
                    read_volatile(local6.add(3)),
                ],
                port,
                family: AF_INET6,
                _pad: 0,
            }
        }
    };
    if ORIG_DST.insert(&key, &orig, 0).is_err() {
        count(Stat::MapUpdateFailed);
        return;
    }
    count(Stat::Recorded);
}

/// Inbound capture, attached to each enrolled pod's network namespace: a TCP connection
/// arriving from outside the pod for one of the pod's addresses goes to the agent's inbound
/// listener, whatever port it was for (the agent reads that port from the accepted socket's
/// local address). Connections over loopback, or from the pod's own address, are left
/// alone: they are the pod talking to itself or the agent delivering to the application.
#[sk_lookup]
pub fn cedille_sk_lookup(ctx: SkLookupContext) -> u32 {
    let l = ctx.lookup;
    // SAFETY: valid context, read with 32-bit loads at constant offsets.
    let (protocol, family, ifindex) = unsafe {
        (
            read_volatile(addr_of!((*l).protocol)),
            read_volatile(addr_of!((*l).family)),
            read_volatile(addr_of!((*l).ingress_ifindex)),
        )
    };
    if protocol != IPPROTO_TCP || ifindex == LOOPBACK_IFINDEX {
        return SK_PASS;
    }
    // SAFETY: as above.
    let (key, from_itself) = unsafe {
        if family == AF_INET as u32 {
            let local = read_volatile(addr_of!((*l).local_ip4));
            let remote = read_volatile(addr_of!((*l).remote_ip4));
            (
                PodAddr {
                    addr: [local, 0, 0, 0],
                    family,
                },
                local == remote,
            )
        } else {
            let l6 = addr_of!((*l).local_ip6) as *const u32;
            let r6 = addr_of!((*l).remote_ip6) as *const u32;
            let local = [
                read_volatile(l6),
                read_volatile(l6.add(1)),
                read_volatile(l6.add(2)),
                read_volatile(l6.add(3)),
            ];
            let remote = [
                read_volatile(r6),
                read_volatile(r6.add(1)),
                read_volatile(r6.add(2)),
                read_volatile(r6.add(3)),
            ];
            (
                PodAddr {
                    addr: local,
                    family,
                },
                local == remote,
            )
        }
    };
    // From the address it is going to: the pod connecting to itself, which is also how the
    // agent delivers inbound connections to the application (the kernel picks the
    // destination as the source of a connection to a local address).
    if from_itself {
        return SK_PASS;
    }
    // SAFETY: the value is copied out at once.
    let Some(slot) = (unsafe { INBOUND.get(&key) }).copied() else {
        return SK_PASS;
    };
    if INBOUND_SOCKS.redirect_sk_lookup(&ctx, slot, 0).is_ok() {
        count(Stat::InboundRedirected);
        return SK_PASS;
    }
    // The agent's listener is gone: the agent is down (or the pod is being un-enrolled).
    if fail_open() {
        count(Stat::FailedOpen);
        return SK_PASS;
    }
    count(Stat::InboundRefused);
    SK_DROP
}
