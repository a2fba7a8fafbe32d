//! Loopback throughput of the shuffle transport between two processes: one QUIC stream
//! with `send_segments`/`recv_segments` (quinn, TLS, the worker's endpoint settings)
//! versus one plain TCP connection with the same framing (an 8-byte length, then the
//! segment).
//!
//! ```text
//! target/release/shuffle_net [--transport quic|tcp] [--total 4GiB] [--segment 64MiB]
//! ```
//!
//! The program starts itself again as the receiver (a second process, as a reducer's
//! worker is), sends one shared segment buffer `total / segment` times (`Bytes` clones,
//! no copies), and the receiver takes the bytes as the transport delivers them
//! (`recv_segments_streaming`, as a reducer streaming a fetch to its spill file does; TCP
//! reads into one reused 1 MiB buffer) and only counts them, so the figure is the
//! transport's cost, not the cost of first-touching memory. It prints
//! `received N bytes` (the receiver's count, which `peers` checks), the throughput of the
//! transfer alone (connection set-up excluded), and the CPU seconds of each side.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use quern_shuffle::{net, Secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The receiver's secret travels in the environment, never on a command line.
const SECRET_VAR: &str = "QUERN_BENCH_SECRET";

#[derive(Parser, Debug)]
#[command(about = "Loopback shuffle throughput between two processes: QUIC vs TCP")]
struct Args {
    /// The transport to measure.
    #[arg(long, value_enum, default_value = "quic")]
    transport: Transport,
    /// Bytes to send in all.
    #[arg(long, default_value = "4GiB", value_parser = parse_size)]
    total: u64,
    /// Bytes per segment (one map's output for one reducer).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    segment: u64,
    /// Internal: run as the receiving process.
    #[arg(long, hide = true)]
    receive: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Quic,
    Tcp,
}

fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>().map(|b| b.as_u64())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.receive {
        receive(args.transport)
    } else {
        send(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shuffle_net: {e}");
            ExitCode::FAILURE
        }
    }
}

/// User + system CPU seconds of this process so far (from /proc/self/stat).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14, 15.
    let Some(rest) = stat.rsplit(')').next() else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => (u + s) / 100.0, // USER_HZ is 100 on Linux
        _ => f64::NAN,
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The receiving process: prints `listening ADDR`, takes one connection, receives every
/// segment, then prints `received N bytes, CPU S s` and acknowledges.
fn receive(transport: Transport) -> Result<(), Error> {
    let announce = |addr: SocketAddr| -> Result<(), Error> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {addr}")?;
        out.flush()?;
        Ok(())
    };
    let report = |received: usize, cpu0: f64| {
        println!(
            "received {received} bytes, CPU {:.2} s",
            cpu_seconds() - cpu0
        );
    };
    runtime()?.block_on(async move {
        match transport {
            Transport::Quic => {
                let secret = Secret::from_hex(&std::env::var(SECRET_VAR)?)?;
                let ep = net::endpoint(loopback(), &secret)?;
                announce(ep.local_addr()?)?;
                let incoming = ep.accept().await.ok_or("endpoint closed")?;
                let conn = net::accept(incoming).await?;
                let mut recv = conn.accept_uni().await?;
                let cpu0 = cpu_seconds();
                let mut received = 0;
                net::recv_segments_streaming(&mut recv, u64::MAX, |_, bytes| {
                    received += bytes.len();
                    Ok(())
                })
                .await?;
                report(received, cpu0);
                conn.close(0u32.into(), b"done");
                ep.wait_idle().await;
            }
            Transport::Tcp => {
                let listener = tokio::net::TcpListener::bind(loopback()).await?;
                announce(listener.local_addr()?)?;
                let (mut stream, _) = listener.accept().await?;
                let cpu0 = cpu_seconds();
                let mut received = 0;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let mut header = [0u8; 8];
                    match stream.read_exact(&mut header).await {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                        Err(e) => return Err(e.into()),
                    }
                    let mut left = usize::try_from(u64::from_le_bytes(header))?;
                    while left > 0 {
                        let n = stream.read(&mut buf[..left.min(1 << 20)]).await?;
                        if n == 0 {
                            return Err("stream ended inside a segment".into());
                        }
                        received += n;
                        left -= n;
                    }
                }
                report(received, cpu0);
                stream.write_all(b"k").await?;
            }
        }
        Ok(())
    })
}

/// The sending process: starts the receiver, sends, and reports.
fn send(args: &Args) -> Result<(), Error> {
    let segment_len = usize::try_from(args.segment.max(1))?;
    let count = usize::try_from((args.total / args.segment.max(1)).max(1))?;
    let segment = Bytes::from(
        (0..segment_len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
            .collect::<Vec<u8>>(),
    );
    let total = (segment_len * count) as u64;
    let secret = Secret::generate()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--receive", "--transport"])
        .arg(match args.transport {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
        })
        .env(SECRET_VAR, secret.to_hex())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no receiver stdout")?).lines();
    let mut line = || -> Result<String, Error> { Ok(lines.next().ok_or("receiver exited")??) };
    let addr: SocketAddr = line()?
        .strip_prefix("listening ")
        .ok_or("receiver did not say where it listens")?
        .parse()?;
    let (secs, cpu) = runtime()?.block_on(async move {
        match args.transport {
            Transport::Quic => {
                let ep = net::endpoint(loopback(), &secret)?;
                let conn = net::connect(&ep, addr).await?;
                let (cpu0, t0) = (cpu_seconds(), Instant::now());
                let mut send = conn.open_uni().await?;
                net::send_segments(&mut send, vec![segment; count]).await?;
                // The receiver closes the connection once it has everything.
                let _ = tokio::time::timeout(Duration::from_secs(600), conn.closed()).await;
                Ok::<_, Error>((t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0))
            }
            Transport::Tcp => {
                let mut stream = tokio::net::TcpStream::connect(addr).await?;
                let (cpu0, t0) = (cpu_seconds(), Instant::now());
                for _ in 0..count {
                    stream
                        .write_all(&(segment.len() as u64).to_le_bytes())
                        .await?;
                    stream.write_all(&segment).await?;
                }
                stream.shutdown().await?;
                let mut ack = [0u8; 1];
                stream.read_exact(&mut ack).await?;
                Ok((t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0))
            }
        }
    })?;
    let received = line()?;
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("receiver failed: {status}").into());
    }
    println!("{received}");
    println!(
        "{:?}: sent {total} bytes in {count} segments of {segment_len}: {secs:.2} s, {:.2} GB/s, \
         sender CPU {cpu:.2} s",
        args.transport,
        total as f64 / secs / 1e9,
    );
    Ok(())
}
