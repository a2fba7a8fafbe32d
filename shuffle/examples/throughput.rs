//! Loopback throughput of the shuffle transport: one QUIC stream with
//! `send_segments`/`recv_segments` versus one plain TCP connection.
//!
//! Sender and receiver run on two threads, each with its own single-threaded tokio
//! runtime (as two processes would). The sender sends one shared segment buffer
//! repeatedly (`Bytes` clones, no copies); the receiver lands every segment in a 16-byte
//! aligned buffer, as a reducer does — either freshly allocated (every page is faulted
//! in during the transfer, `recv_segments`) or recycled from a pool touched beforehand
//! (`recv_segments_reusing`), to separate the transport's cost from first-touch memory.
//!
//! ```text
//! cargo run --release -p quern-shuffle --example throughput [TOTAL_MIB] [SEGMENT_MIB]
//! ```
//! Defaults: 2048 MiB in 64 MiB segments.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quern_shuffle::{net, Secret};
use rkyv::util::AlignedVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let total_mib: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2048);
    let segment_mib: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(64);
    let segment_len = usize::try_from(segment_mib << 20)?;
    let count = usize::try_from((total_mib / segment_mib).max(1))?;
    let segment = Bytes::from(
        (0..segment_len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
            .collect::<Vec<u8>>(),
    );
    let total = (segment_len * count) as u64;
    println!(
        "sending {count} x {segment_mib} MiB = {:.2} GiB over loopback",
        total as f64 / (1u64 << 30) as f64
    );

    for reuse in [false, true] {
        let buffers = if reuse { "recycled" } else { "fresh" };
        let (secs, cpu, mtu) = quic(segment.clone(), count, reuse)?;
        report(
            &format!("QUIC, 1 stream, {buffers} buffers"),
            total,
            secs,
            cpu,
        );
        println!("    path MTU at end of transfer: {mtu} bytes");
        let (secs, cpu) = tcp(segment.clone(), count, reuse)?;
        report(
            &format!("TCP,  1 conn,   {buffers} buffers"),
            total,
            secs,
            cpu,
        );
    }
    Ok(())
}

fn report(what: &str, bytes: u64, secs: f64, cpu: f64) {
    println!(
        "{what}: {:.2} GB/s ({:.2} GiB/s), {secs:.2} s wall, {cpu:.2} s CPU ({:.0}% of one core)",
        bytes as f64 / secs / 1e9,
        bytes as f64 / secs / (1u64 << 30) as f64,
        100.0 * cpu / secs
    );
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

/// `count` buffers of `len` bytes, every page touched, if `reuse`; else none.
fn pool(reuse: bool, count: usize, len: usize) -> Vec<AlignedVec<16>> {
    if !reuse {
        return Vec::new();
    }
    (0..count)
        .map(|_| {
            let mut buf = AlignedVec::<16>::with_capacity(len);
            buf.resize(len, 0);
            buf.clear();
            buf
        })
        .collect()
}

/// Returns (seconds, CPU seconds, final path MTU).
fn quic(segment: Bytes, count: usize, reuse: bool) -> Result<(f64, f64, u16), Error> {
    let len = segment.len();
    let secret = Secret::generate()?;
    let receiver_secret = secret.clone();
    let (addr_tx, addr_rx) = mpsc::channel();
    let receiver = std::thread::spawn(move || -> Result<usize, Error> {
        let mut spare = pool(reuse, count, len);
        runtime()?.block_on(async move {
            let ep = net::endpoint(loopback(), &receiver_secret)?;
            addr_tx.send(ep.local_addr()?)?;
            let incoming = ep.accept().await.ok_or("endpoint closed")?;
            let conn = net::accept(incoming).await?;
            let mut recv = conn.accept_uni().await?;
            let segments = net::recv_segments_reusing(&mut recv, u64::MAX, &mut spare).await?;
            let received = segments.iter().map(AlignedVec::len).sum();
            conn.close(0u32.into(), b"done");
            ep.wait_idle().await;
            Ok(received)
        })
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10))?;
    let (secs, cpu, mtu) = runtime()?.block_on(async move {
        let ep = net::endpoint(loopback(), &secret)?;
        let conn = net::connect(&ep, addr).await?;
        let (cpu0, t0) = (cpu_seconds(), Instant::now());
        let mut send = conn.open_uni().await?;
        net::send_segments(&mut send, vec![segment; count]).await?;
        // The receiver closes the connection once it has everything.
        let _ = tokio::time::timeout(Duration::from_secs(600), conn.closed()).await;
        let secs = t0.elapsed().as_secs_f64();
        let mtu = conn.stats().path.current_mtu;
        Ok::<_, Error>((secs, cpu_seconds() - cpu0, mtu))
    })?;
    let received = receiver.join().map_err(|_| "receiver panicked")??;
    println!("    QUIC received {received} bytes");
    Ok((secs, cpu, mtu))
}

/// Returns (seconds, CPU seconds).
fn tcp(segment: Bytes, count: usize, reuse: bool) -> Result<(f64, f64), Error> {
    let len = segment.len();
    let (addr_tx, addr_rx) = mpsc::channel();
    let receiver = std::thread::spawn(move || -> Result<usize, Error> {
        let mut spare = pool(reuse, count, len);
        runtime()?.block_on(async move {
            let listener = tokio::net::TcpListener::bind(loopback()).await?;
            addr_tx.send(listener.local_addr()?)?;
            let (mut stream, _) = listener.accept().await?;
            let mut segments = Vec::new();
            loop {
                let mut header = [0u8; 8];
                match stream.read_exact(&mut header).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e.into()),
                }
                let len = usize::try_from(u64::from_le_bytes(header))?;
                let mut buf = spare.pop().unwrap_or_default();
                buf.resize(len, 0);
                stream.read_exact(&mut buf).await?;
                segments.push(buf);
            }
            stream.write_all(b"k").await?;
            Ok(segments.iter().map(AlignedVec::len).sum())
        })
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10))?;
    let (secs, cpu) = runtime()?.block_on(async move {
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
        Ok::<_, Error>((t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0))
    })?;
    let received = receiver.join().map_err(|_| "receiver panicked")??;
    println!("    TCP received {received} bytes");
    Ok((secs, cpu))
}
