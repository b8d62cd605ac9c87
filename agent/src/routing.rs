//! Transparent delivery inside a pod: the agent hands a connection to the application with
//! the client's own address as the source (`IP_TRANSPARENT`), so the application sees who
//! called, as it would without the mesh.
//!
//! The agent's delivering socket carries [`DELIVER_MARK`]. In the pod's network namespace,
//! `net.ipv4.tcp_fwmark_accept=1` makes the application's accepted socket (and its SYN-ACK)
//! carry the same mark (`fwmark_reflect` does the same for a reset from a closed port), and a policy routing rule sends packets with that mark to a table
//! whose only route is `local default dev lo`: the replies to the client's (non-local)
//! address come back to the agent instead of leaving the pod. This is the in-pod set-up
//! ztunnel uses, without iptables: one rule and two routes, made over rtnetlink.

use std::{
    fs::File,
    io::{self, Write},
    os::fd::{AsRawFd, OwnedFd},
};

use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, recv, send, socket,
};

use crate::netns;

/// The mark on the agent's delivering sockets (and, through `tcp_fwmark_accept`, on the
/// application's side of those connections).
pub const DELIVER_MARK: u32 = 0x53a;
/// The routing table holding `local default dev lo`.
pub const TABLE: u32 = 15008;
/// The policy rule's priority (before the main table's 32766).
const PRIORITY: u32 = 1000;

const RTM_NEWROUTE: u16 = 24;
const RTM_NEWRULE: u16 = 32;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const FR_ACT_TO_TBL: u8 = 1;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_HOST: u8 = 254;
const RTN_LOCAL: u8 = 2;
const LOOPBACK_IFINDEX: u32 = 1;
const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

/// Sets up transparent delivery in the network namespace `ns` (idempotent: an agent
/// restart finds it in place).
pub fn setup(ns: &File) -> io::Result<()> {
    netns::with_netns(ns, || {
        // Accepted sockets carry the SYN's mark; resets and ICMP errors the kernel sends in
        // answer (a closed port) carry the mark of what they answer.
        for (sysctl, required) in [
            ("ipv4/tcp_fwmark_accept", true),
            ("ipv4/fwmark_reflect", true),
            ("ipv6/fwmark_reflect", false),
        ] {
            let set = File::options()
                .write(true)
                .open(format!("/proc/sys/net/{sysctl}"))
                .and_then(|mut f| f.write_all(b"1"));
            if let Err(e) = set
                && required
            {
                let name = sysctl.replace('/', ".");
                return Err(io::Error::new(e.kind(), format!("net.{name}: {e}")));
            }
        }
        let sock = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        for family in [AF_INET, AF_INET6] {
            let done = request(&sock, RTM_NEWRULE, &rule(family))
                .and_then(|()| request(&sock, RTM_NEWROUTE, &route(family)));
            match done {
                Ok(()) => {}
                // IPv6 disabled in the pod: IPv4 delivery still works.
                Err(e) if family == AF_INET6 && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
                Err(e) => {
                    let v = if family == AF_INET { "IPv4" } else { "IPv6" };
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "{v} policy routing (rule fwmark {DELIVER_MARK:#x} to table {TABLE}, local default dev lo): {e}"
                        ),
                    ));
                }
            }
        }
        Ok(())
    })
}

fn rule(family: u8) -> Vec<u8> {
    // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action; flags.
    let mut m = vec![family, 0, 0, 0, 0, 0, 0, FR_ACT_TO_TBL];
    m.extend_from_slice(&0u32.to_ne_bytes());
    attr(&mut m, FRA_PRIORITY, &PRIORITY.to_ne_bytes());
    attr(&mut m, FRA_FWMARK, &DELIVER_MARK.to_ne_bytes());
    attr(&mut m, FRA_FWMASK, &u32::MAX.to_ne_bytes());
    attr(&mut m, FRA_TABLE, &TABLE.to_ne_bytes());
    m
}

fn route(family: u8) -> Vec<u8> {
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type; flags.
    let mut m = vec![family, 0, 0, 0, 0, RTPROT_STATIC, RT_SCOPE_HOST, RTN_LOCAL];
    m.extend_from_slice(&0u32.to_ne_bytes());
    attr(&mut m, RTA_TABLE, &TABLE.to_ne_bytes());
    attr(&mut m, RTA_OIF, &LOOPBACK_IFINDEX.to_ne_bytes());
    m
}

fn attr(m: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    m.extend_from_slice(&(len as u16).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(payload);
    while !m.len().is_multiple_of(4) {
        m.push(0);
    }
}

/// Sends one request and reads its acknowledgement; "exists already" counts as done.
fn request(sock: &OwnedFd, ty: u16, body: &[u8]) -> io::Result<()> {
    let len = 16 + body.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&ty.to_ne_bytes());
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(body);
    send(sock.as_raw_fd(), &msg, MsgFlags::empty())?;
    let mut buf = [0u8; 4096];
    let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    if n < 20 {
        return Err(io::Error::other("short netlink answer"));
    }
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    if kind != NLMSG_ERROR {
        return Err(io::Error::other(format!(
            "unexpected netlink answer {kind}"
        )));
    }
    let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
    match -code {
        0 => Ok(()),
        libc::EEXIST => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_laid_out_as_the_kernel_reads_them() {
        let r = rule(AF_INET);
        // 12-byte header, then four 8-byte attributes.
        assert_eq!(r.len(), 12 + 4 * 8);
        assert_eq!(r[7], FR_ACT_TO_TBL);
        assert_eq!(u16::from_ne_bytes([r[14], r[15]]), FRA_PRIORITY);
        let rt = route(AF_INET6);
        assert_eq!(rt.len(), 12 + 2 * 8);
        assert_eq!((rt[0], rt[6], rt[7]), (AF_INET6, RT_SCOPE_HOST, RTN_LOCAL));
    }
}
