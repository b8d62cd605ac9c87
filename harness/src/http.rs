use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

/// `GET path` from an admin endpoint at `addr` (HTTP/1.1, one request per connection);
/// the response body, or `None` if the endpoint cannot be reached or answers nothing.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n")?.1.to_owned())
}
