//! A tiny TCP tool for the agent's privileged tests and benchmark, run inside test pods:
//!
//! - `cedille-probe serve ADDR...`: on each connection, writes one line
//!   `local=<local address> peer=<peer address>`, then echoes what it reads.
//! - `cedille-probe connect ADDR [TIMEOUT_MS]`: connects, prints the server's first line,
//!   exits 0; exits 1 with the error otherwise.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    time::Duration,
};

fn serve(addrs: &[String]) -> std::io::Result<()> {
    let mut threads = Vec::new();
    for a in addrs {
        let listener = TcpListener::bind(a)?;
        threads.push(std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let _ = echo(s);
                });
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn echo(mut s: TcpStream) -> std::io::Result<()> {
    let line = format!("local={} peer={}\n", s.local_addr()?, s.peer_addr()?);
    s.write_all(line.as_bytes())?;
    let mut buf = [0u8; 16384];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n])?;
    }
}

fn connect(addr: &str, timeout_ms: u64) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let t = Duration::from_millis(timeout_ms);
    let s = TcpStream::connect_timeout(&addr, t).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(t)).map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    if line.is_empty() {
        return Err(format!("{addr} closed the connection without a word"));
    }
    Ok(line.trim_end().to_owned())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") if args.len() > 1 => match serve(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cedille-probe serve: {e}");
                ExitCode::FAILURE
            }
        },
        Some("connect") if args.len() > 1 => {
            let timeout = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(2000);
            match connect(&args[1], timeout) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!(
                "usage: cedille-probe serve ADDR... | cedille-probe connect ADDR [TIMEOUT_MS]"
            );
            ExitCode::from(2)
        }
    }
}
