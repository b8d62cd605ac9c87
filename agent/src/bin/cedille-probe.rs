//! A small TCP tool for the agent's privileged tests and benchmark, run inside test pods.
//!
//! For the tests:
//! - `cedille-probe serve ADDR...`: on each connection, writes one line
//!   `local=<local address> peer=<peer address>`, then echoes what it reads.
//! - `cedille-probe connect ADDR [TIMEOUT_MS]`: connects, prints the server's first line,
//!   exits 0; exits 1 with the error otherwise.
//! - `cedille-probe send ADDR TEXT`: as `connect`, then sends TEXT and checks that it comes
//!   back (from `serve`'s echo).
//! - `cedille-probe hold ADDR SECONDS`: connects, prints the server's first line at once,
//!   then waits: prints `closed after=<ms>` and exits 0 when the connection is closed (by
//!   the peer or a reset), exits 1 if it is still open after SECONDS.
//!
//! For `cargo xtask bench agent` (each load command prints one `key=value ...` line):
//! - `cedille-probe bench-serve ECHO_ADDR SINK_ADDR`: echoes on the first address; on the
//!   second, counts what it reads until the client's end of stream, then answers with that
//!   count (8 bytes, little-endian).
//! - `cedille-probe rr ADDR --rate R --seconds S --connections C`: request/response over C
//!   persistent connections at a fixed total rate; latency is taken from each request's
//!   scheduled start, so a stall counts against every request it delays.
//! - `cedille-probe crr ADDR --seconds S --concurrency C`: new connection, one
//!   request/response, close, as fast as C clients can.
//! - `cedille-probe bulk ADDR --seconds S`: one connection streaming to a sink.
//! - `cedille-probe idle ADDR --count N --seconds S`: opens N connections to an echo address,
//!   each proven end to end with one byte, prints `open=N`, holds them S seconds.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};

/// Bytes in each request and response of `rr` and `crr`.
const MESSAGE: usize = 64;
/// How long `rr` runs before it starts recording, so connection set-up is not measured.
const WARMUP: Duration = Duration::from_millis(500);

#[derive(Parser)]
#[command(about = "TCP probe and load generator for the agent's tests and benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Answer each connection with `local=… peer=…`, then echo.
    Serve {
        #[arg(required = true)]
        addrs: Vec<String>,
    },
    /// Connect and print the server's first line.
    Connect {
        addr: SocketAddr,
        #[arg(default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Connect, print the first line, send TEXT and check the echo.
    Send { addr: SocketAddr, text: String },
    /// Connect, print the first line, then report when the connection is closed.
    Hold { addr: SocketAddr, seconds: u64 },
    /// The benchmark's server: an echo address and a sink address.
    BenchServe { echo: SocketAddr, sink: SocketAddr },
    /// Fixed-rate request/response over persistent connections.
    Rr {
        addr: SocketAddr,
        #[arg(long, default_value_t = 5000)]
        rate: u32,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 8)]
        connections: u32,
    },
    /// Connection, request, response, close; closed loop.
    Crr {
        addr: SocketAddr,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 4)]
        concurrency: u32,
    },
    /// Hold many proven, idle connections (for memory per connection).
    Idle {
        addr: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        count: u32,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// One connection streaming to a sink.
    Bulk {
        addr: SocketAddr,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
}

fn serve(addrs: &[String]) -> std::io::Result<()> {
    let mut threads = Vec::new();
    for a in addrs {
        let listener = TcpListener::bind(a)?;
        threads.push(std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let _ = echo_with_banner(s);
                });
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn echo_with_banner(mut s: TcpStream) -> std::io::Result<()> {
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

fn send(addr: SocketAddr, text: &str) -> Result<String, String> {
    let t = Duration::from_secs(3);
    let s = TcpStream::connect_timeout(&addr, t).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(t)).map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    w.write_all(text.as_bytes())
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut back = vec![0u8; text.len()];
    r.read_exact(&mut back)
        .map_err(|e| format!("echo from {addr}: {e}"))?;
    if back != text.as_bytes() {
        return Err(format!(
            "{addr} echoed {:?}",
            String::from_utf8_lossy(&back)
        ));
    }
    Ok(line.trim_end().to_owned())
}

fn hold(addr: SocketAddr, seconds: u64) -> Result<String, String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(seconds.max(1))))
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    println!("{}", line.trim_end());
    let _ = std::io::stdout().flush();
    let t = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("{addr} still open after {seconds} s"));
            }
            Err(_) => break,
        }
    }
    Ok(format!("closed after={}", t.elapsed().as_millis()))
}

fn connect(addr: SocketAddr, timeout_ms: u64) -> Result<String, String> {
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

/// The benchmark server, on tokio so that thousands of short connections a second cost
/// no thread start-ups.
fn bench_serve(echo: SocketAddr, sink: SocketAddr) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let echo = tokio::net::TcpListener::bind(echo).await?;
        let sink = tokio::net::TcpListener::bind(sink).await?;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = sink.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut total = 0u64;
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) => break,
                            Ok(n) => total += n as u64,
                            Err(_) => return,
                        }
                    }
                    let _ = s.write_all(&total.to_le_bytes()).await;
                });
            }
        });
        loop {
            let (mut s, _) = echo.accept().await?;
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    })
}

/// Sleeps with the kernel's finest timer slack, so a fixed schedule is kept to a few
/// microseconds instead of the default 50.
fn fine_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1) };
}

fn one_request(s: &mut TcpStream, buf: &mut [u8; MESSAGE]) -> std::io::Result<()> {
    s.write_all(&[b'x'; MESSAGE])?;
    s.read_exact(buf)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// Latencies in nanoseconds, and errors (or, for `rr`, requests sent), per thread.
type Samples = std::io::Result<(Vec<u64>, u64)>;

fn rr(addr: SocketAddr, rate: u32, seconds: u64, connections: u32) -> Result<String, String> {
    if rate == 0 || connections == 0 {
        return Err("--rate and --connections must be positive".into());
    }
    let interval = Duration::from_secs_f64(f64::from(connections) / f64::from(rate));
    let start = Instant::now() + Duration::from_millis(200);
    let record_from = start + WARMUP;
    let end = record_from + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..connections)
        .map(|c| {
            std::thread::spawn(move || -> Samples {
                fine_timers();
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut buf = [0u8; MESSAGE];
                let mut lat = Vec::with_capacity((rate as u64 * seconds) as usize / 2);
                let mut next = start + interval.mul_f64(f64::from(c) / f64::from(connections));
                let mut sent = 0;
                while next < end {
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                    // An error ends this connection: the rest of its schedule is lost, and
                    // reported as errors.
                    one_request(&mut s, &mut buf)?;
                    sent += 1;
                    if next >= record_from {
                        lat.push(next.elapsed().as_nanos() as u64);
                    }
                    next += interval;
                }
                Ok((lat, sent))
            })
        })
        .collect();
    let (mut all, sent, errors) = collect(threads)?;
    let expected = (u64::from(rate) * seconds) as f64;
    all.sort_unstable();
    Ok(format!(
        "requests={} expected={expected} sent={sent} errors={errors} p50_us={:.1} p99_us={:.1} p999_us={:.1}",
        all.len(),
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        percentile(&all, 0.999),
    ))
}

/// Every thread's latencies, the sum of their counts, and the threads that failed.
fn collect(threads: Vec<std::thread::JoinHandle<Samples>>) -> Result<(Vec<u64>, u64, u64), String> {
    let mut all = Vec::new();
    let mut count = 0;
    let mut errors = 0;
    let mut first_error = None;
    for t in threads {
        match t.join().map_err(|_| "load thread panicked".to_owned())? {
            Ok((lat, n)) => {
                all.extend(lat);
                count += n;
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if all.is_empty() => Err(format!("every connection failed: {e}")),
        _ => Ok((all, count, errors)),
    }
}

fn crr(addr: SocketAddr, seconds: u64, concurrency: u32) -> Result<String, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || -> Samples {
                let mut lat = Vec::new();
                let mut errors = 0;
                let mut buf = [0u8; MESSAGE];
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).and_then(
                        |mut s| {
                            s.set_nodelay(true)?;
                            s.set_read_timeout(Some(Duration::from_secs(2)))?;
                            one_request(&mut s, &mut buf)
                        },
                    );
                    match r {
                        Ok(()) => lat.push(t.elapsed().as_nanos() as u64),
                        Err(_) => {
                            errors += 1;
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                Ok((lat, errors))
            })
        })
        .collect();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let (mut all, failed, failed_threads) = collect(threads)?;
    let errors = failed + failed_threads;
    let secs = t.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok(format!(
        "connections={} errors={errors} per_second={:.0} p50_us={:.1} p99_us={:.1}",
        all.len(),
        all.len() as f64 / secs,
        percentile(&all, 0.50),
        percentile(&all, 0.99),
    ))
}

fn idle(addr: SocketAddr, count: u32, seconds: u64) -> Result<String, String> {
    let mut open = Vec::with_capacity(count as usize);
    for i in 0..count {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connection {i} to {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        s.write_all(b"x")
            .and_then(|()| s.read_exact(&mut b))
            .map_err(|e| format!("connection {i} to {addr}: {e}"))?;
        open.push(s);
    }
    println!("open={}", open.len());
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs(seconds));
    Ok(String::new())
}

fn bulk(addr: SocketAddr, seconds: u64) -> Result<String, String> {
    let err = |what: &str, e: std::io::Error| format!("{what} {addr}: {e}");
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| err("connect", e))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| err("set timeout", e))?;
    let chunk = vec![0x5au8; 256 * 1024];
    let t = Instant::now();
    let end = t + Duration::from_secs(seconds);
    let mut sent = 0u64;
    while Instant::now() < end {
        s.write_all(&chunk).map_err(|e| err("write to", e))?;
        sent += chunk.len() as u64;
    }
    s.shutdown(Shutdown::Write)
        .map_err(|e| err("shutdown", e))?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count)
        .map_err(|e| err("read count from", e))?;
    let secs = t.elapsed().as_secs_f64();
    let received = u64::from_le_bytes(count);
    if received != sent {
        return Err(format!("sent {sent} bytes, the sink counted {received}"));
    }
    Ok(format!(
        "bytes={received} seconds={secs:.3} gbit_per_second={:.3}",
        received as f64 * 8.0 / secs / 1e9
    ))
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Serve { addrs } => serve(&addrs)
            .map(|()| String::new())
            .map_err(|e| e.to_string()),
        Cmd::Connect { addr, timeout_ms } => connect(addr, timeout_ms),
        Cmd::Send { addr, text } => send(addr, &text),
        Cmd::Hold { addr, seconds } => hold(addr, seconds),
        Cmd::BenchServe { echo, sink } => bench_serve(echo, sink)
            .map(|()| String::new())
            .map_err(|e| e.to_string()),
        Cmd::Rr {
            addr,
            rate,
            seconds,
            connections,
        } => rr(addr, rate, seconds, connections),
        Cmd::Crr {
            addr,
            seconds,
            concurrency,
        } => crr(addr, seconds, concurrency),
        Cmd::Bulk { addr, seconds } => bulk(addr, seconds),
        Cmd::Idle {
            addr,
            count,
            seconds,
        } => idle(addr, count, seconds),
    };
    match result {
        Ok(line) => {
            if !line.is_empty() {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cedille-probe: {e}");
            ExitCode::FAILURE
        }
    }
}
