//! Sockets inside other network namespaces. The agent opens each enrolled pod's listeners in
//! the pod's own namespace from a short-lived thread that `setns`es there, so the agent process
//! itself never leaves the host namespace.

use std::{
    fs::File,
    io,
    net::{SocketAddr, TcpListener},
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::Path,
};

use nix::{
    sched::{CloneFlags, setns},
    sys::socket::{
        SockaddrIn, SockaddrIn6, SockaddrLike, SockaddrStorage, getpeername, getsockopt,
        sockopt::{Ip6tOriginalDst, OriginalDst},
    },
};

/// `SO_NETNS_COOKIE` from `<asm-generic/socket.h>`; nix has no socket option for it.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Runs `f` on a thread that has joined the network namespace at `netns` (a path such as
/// `/proc/<pid>/ns/net` or `/run/netns/<name>`). Sockets `f` creates belong to that namespace
/// for their whole life, whichever thread uses them afterwards.
pub fn in_netns<T, F>(netns: &Path, f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> io::Result<T> + Send,
{
    let ns = File::open(netns).map_err(|e| annotate(e, netns, "open network namespace"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // Only this thread joins the namespace, and it ends when `f` returns.
                setns(&ns, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| annotate(e.into(), netns, "join network namespace"))?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("thread in network namespace panicked")))
    })
}

fn annotate(e: io::Error, path: &Path, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Binds a TCP listener at `addr` inside the network namespace at `netns`.
pub fn bind_in(netns: &Path, addr: SocketAddr) -> io::Result<TcpListener> {
    in_netns(netns, move || {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
}

/// The kernel's cookie for the network namespace a socket lives in (Linux 5.14+). The eBPF
/// programs key their per-pod state by it.
pub fn netns_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: nix has no wrapper for SO_NETNS_COOKIE. getsockopt writes at most `len` bytes
    // (the size of `cookie`, a u64 valid for any bit pattern) into `cookie`, which outlives
    // the call; `fd` is a borrowed, open descriptor.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The cookie of the network namespace at `netns`, read from a socket made there.
pub fn netns_cookie_of(netns: &Path) -> io::Result<u64> {
    in_netns(netns, || {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").or_else(|_| {
            // A namespace whose loopback is down still lets us create an unbound socket.
            std::net::UdpSocket::bind("0.0.0.0:0")
        })?;
        netns_cookie(probe.as_fd())
    })
}

/// The peer address of a connected socket, without needing a std or tokio stream type.
pub fn peer_addr(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    let storage = getpeername::<SockaddrStorage>(fd.as_raw_fd())?;
    sockaddr_to_std(&storage)
}

fn sockaddr_to_std(storage: &SockaddrStorage) -> io::Result<SocketAddr> {
    if let Some(sin) = storage.as_sockaddr_in() {
        Ok(SocketAddr::new(sin.ip().into(), sin.port()))
    } else if let Some(sin6) = storage.as_sockaddr_in6() {
        Ok(SocketAddr::new(sin6.ip().into(), sin6.port()))
    } else {
        let family = storage
            .family()
            .map_or_else(|| "unknown".to_owned(), |f| (f as i32).to_string());
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket family {family} is not IP"),
        ))
    }
}

/// The agent's own network namespace, opened once so that [`with_netns`] can return to it.
fn host_netns() -> io::Result<&'static File> {
    static HOST: std::sync::OnceLock<File> = std::sync::OnceLock::new();
    if let Some(f) = HOST.get() {
        return Ok(f);
    }
    let f = File::open("/proc/self/ns/net")?;
    Ok(HOST.get_or_init(|| f))
}

/// Runs `f` with the calling thread inside the network namespace `ns`, then moves the thread
/// back. Much cheaper than [`in_netns`] (no thread), for per-connection sockets; `f` must not
/// block or yield. Sockets `f` creates stay in `ns`.
pub fn with_netns<T>(ns: &File, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let host = host_netns()?;
    // Only this thread moves, and it is moved back before the function returns.
    setns(ns, CloneFlags::CLONE_NEWNET)?;
    let out = f();
    if let Err(e) = setns(host, CloneFlags::CLONE_NEWNET) {
        // A thread stuck in a pod's namespace would open later sockets in the wrong place.
        let e = io::Error::from(e);
        panic!("cannot return to the agent's network namespace: {e}");
    }
    out
}

/// The destination an iptables `REDIRECT` rule rewrote (`SO_ORIGINAL_DST`), for pods whose
/// connections reach the agent that way instead of through its eBPF programs.
pub fn original_dst_netfilter(fd: BorrowedFd<'_>, v6: bool) -> io::Result<SocketAddr> {
    if v6 {
        let sin6 = SockaddrIn6::from(getsockopt(&fd, Ip6tOriginalDst)?);
        Ok(SocketAddr::new(sin6.ip().into(), sin6.port()))
    } else {
        let sin = SockaddrIn::from(getsockopt(&fd, OriginalDst)?);
        Ok(SocketAddr::new(sin.ip().into(), sin.port()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn peer_addr_and_cookie_of_a_loopback_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, seen) = listener.accept().unwrap();
        assert_eq!(peer_addr(server.as_fd()).unwrap(), seen);
        assert_eq!(seen, client.local_addr().unwrap());
        // Both ends live in this namespace, so they share its cookie.
        let a = netns_cookie(server.as_fd()).unwrap();
        let b = netns_cookie(client.as_fd()).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, 0);
    }

    #[test]
    fn peer_addr_of_an_ipv6_connection_and_no_netfilter_original_dst() {
        // Hosts without IPv6 loopback cannot run the v6 half.
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            return;
        };
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, seen) = listener.accept().unwrap();
        assert_eq!(peer_addr(server.as_fd()).unwrap(), seen);
        assert_eq!(seen, client.local_addr().unwrap());
        // Not redirected by iptables: an error (ENOENT, or ENOPROTOOPT without conntrack),
        // never a made-up address.
        assert!(original_dst_netfilter(server.as_fd(), true).is_err());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert!(original_dst_netfilter(server.as_fd(), false).is_err());
    }

    #[test]
    fn missing_namespace_is_named_in_the_error() {
        let err = netns_cookie_of(Path::new("/nonexistent/ns")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ns"), "{err}");
    }
}
