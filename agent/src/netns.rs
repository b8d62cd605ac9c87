//! Sockets inside other network namespaces. The agent opens each enrolled pod's listeners in
//! the pod's own namespace from a short-lived thread that `setns`es there, so the agent process
//! itself never leaves the host namespace.

use std::{
    fs::File,
    io,
    mem::MaybeUninit,
    net::{SocketAddr, TcpListener},
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::Path,
};

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
                // SAFETY: setns on a descriptor we own; it only affects this thread, which ends
                // when `f` returns.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let e = io::Error::last_os_error();
                    return Err(annotate(e, netns, "join network namespace"));
                }
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
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
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
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getpeername writes at most `len` bytes into `storage`.
    let rc = unsafe { libc::getpeername(fd.as_raw_fd(), storage.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised and filled in by the kernel.
    let storage = unsafe { storage.assume_init() };
    sockaddr_to_std(&storage)
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let sin: libc::sockaddr_in = unsafe { std::mem::transmute_copy(storage) };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Ok(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let sin6: libc::sockaddr_in6 = unsafe { std::mem::transmute_copy(storage) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Ok(SocketAddr::new(ip.into(), u16::from_be(sin6.sin6_port)))
        }
        family => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket family {family} is not IP"),
        )),
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
    // SAFETY: setns on descriptors we own; only this thread is affected, and it is moved back
    // before the function returns.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let out = f();
    // SAFETY: as above.
    if unsafe { libc::setns(host.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        // A thread stuck in a pod's namespace would open later sockets in the wrong place.
        let e = io::Error::last_os_error();
        panic!("cannot return to the agent's network namespace: {e}");
    }
    out
}

/// The destination an iptables `REDIRECT` rule rewrote (`SO_ORIGINAL_DST`), for pods whose
/// connections reach the agent that way instead of through its eBPF programs.
pub fn original_dst_netfilter(fd: BorrowedFd<'_>, v6: bool) -> io::Result<SocketAddr> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let level = if v6 { libc::SOL_IPV6 } else { libc::SOL_IP };
    // SAFETY: getsockopt writes at most `len` bytes into `storage`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            SO_ORIGINAL_DST,
            storage.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel initialised `len` bytes of a sockaddr.
    let storage = unsafe { storage.assume_init() };
    sockaddr_to_std(&storage)
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
    fn missing_namespace_is_named_in_the_error() {
        let err = netns_cookie_of(Path::new("/nonexistent/ns")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ns"), "{err}");
    }
}
