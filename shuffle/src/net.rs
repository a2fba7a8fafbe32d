//! QUIC endpoints, connection set-up with cluster authentication, and stream framing.
//!
//! One [`endpoint`] per process both accepts and connects. Connections are mutually
//! authenticated TLS 1.3 (see [`crate::auth`]); a handshake with a peer that does not
//! hold the cluster secret fails with [`NetError::Auth`].
//!
//! On streams quern sends two kinds of payload:
//! - **control frames**: a `u32` little-endian length then the bytes
//!   ([`write_frame`] / [`read_frame`]), usually an rkyv archive ([`encode`] / [`decode`]);
//! - **bulk segments** of the shuffle: per segment a `u64` little-endian length then the
//!   bytes exactly as they lie on disk ([`send_segments`] / [`recv_segments`]). Segments
//!   are handed to quinn as [`Bytes`], so an mmap wrapped with `Bytes::from_owner` is
//!   sent without a userspace copy; the receiver lands each one in a 16-byte aligned
//!   buffer that [`crate::FrameIter`] validates in place.
//!
//! Every length read from the network is checked against a caller-supplied bound before
//! anything is allocated, and rkyv archives are always validated (`rkyv::access`),
//! never accessed unchecked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{ConnectionError, Endpoint, RecvStream, SendStream};
use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::BoxedError;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

use crate::auth::{Identity, Secret, SERVER_NAME};
use crate::block::BlockError;

/// Upper bound of path-MTU discovery (UDP payload bytes). Above ~6500, GSO batches
/// exceed 64 KiB and quinn silently falls back to 1200-byte packets.
pub const MTU_UPPER_BOUND: u16 = 6500;
/// Socket send and receive buffer size requested (the kernel caps it at
/// `net.core.wmem_max` / `rmem_max`).
pub const SOCKET_BUFFER_BYTES: usize = 16 << 20;
/// Connection-level receive window (and send window).
pub const CONNECTION_WINDOW: u32 = 64 << 20;
/// Per-stream receive window.
pub const STREAM_WINDOW: u32 = 16 << 20;
/// Concurrent bidirectional streams a peer may open.
pub const MAX_BIDI_STREAMS: u32 = 1024;
/// Interval of keep-alive packets on idle connections.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// A connection with no packet from the peer for this long is lost.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a control frame's length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;
/// Bytes of a bulk segment's length prefix.
pub const SEGMENT_HEADER_BYTES: usize = 8;

/// Any failure of the networking layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TLS handshake failed: the peer does not hold the cluster secret (or does
    /// not speak quern's protocol).
    #[error("{0}")]
    Auth(String),
    /// Connecting to a peer failed for a reason other than authentication.
    #[error("connecting to {addr} failed: {source}")]
    Connect {
        /// The peer's address.
        addr: SocketAddr,
        /// What quinn reported.
        #[source]
        source: ConnectionError,
    },
    /// A connection attempt could not even be started (endpoint closed, bad config).
    #[error("cannot start a connection to {addr}: {source}")]
    ConnectSetup {
        /// The peer's address.
        addr: SocketAddr,
        /// What quinn reported.
        #[source]
        source: quinn::ConnectError,
    },
    /// Accepting an incoming connection failed for a reason other than authentication.
    #[error("accepting a connection from {addr} failed: {source}")]
    Accept {
        /// The peer's address.
        addr: SocketAddr,
        /// What quinn reported.
        #[source]
        source: ConnectionError,
    },
    /// Building TLS material or configuration failed.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The cluster secret is malformed (the message names its source).
    #[error("{0}")]
    Secret(String),
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file or address.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// [`endpoint`] was called outside a tokio runtime.
    #[error("quinn endpoints must be created inside a tokio runtime")]
    NoRuntime,
    /// Reading a stream failed.
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing a stream failed.
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream was already finished or reset locally.
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    /// A frame or segment on the wire is malformed: oversize length or truncated.
    #[error("malformed frame: {0}")]
    Frame(String),
    /// Serialising a message failed.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// A received message failed rkyv validation.
    #[error("invalid message: {0}")]
    Decode(String),
    /// A received block failed validation.
    #[error(transparent)]
    Block(#[from] BlockError),
}

/// Creates this process's QUIC endpoint bound to `bind`: it accepts connections
/// (server config, client certificate required) and connects (default client config),
/// both authenticated with an [`Identity`] derived from `secret`.
///
/// Tuned for bulk transfer on loopback/LAN: MTU discovery up to [`MTU_UPPER_BOUND`]
/// (with a matching `max_udp_payload_size`; the initial MTU stays at 1200),
/// [`SOCKET_BUFFER_BYTES`] socket buffers where the kernel allows,
/// [`CONNECTION_WINDOW`] / [`STREAM_WINDOW`] flow-control windows,
/// [`MAX_BIDI_STREAMS`] concurrent streams, [`KEEP_ALIVE`] and [`IDLE_TIMEOUT`].
///
/// Must be called inside a tokio runtime (returns [`NetError::NoRuntime`] otherwise).
pub fn endpoint(bind: SocketAddr, secret: &Secret) -> Result<Endpoint, NetError> {
    endpoint_with_identity(bind, &Identity::new(secret)?)
}

/// As [`endpoint`], with an already built [`Identity`].
pub fn endpoint_with_identity(bind: SocketAddr, identity: &Identity) -> Result<Endpoint, NetError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(NetError::NoRuntime);
    }
    let transport = Arc::new(transport_config());

    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(identity.server_config())
        .map_err(|e| NetError::Tls(format!("QUIC server config: {e}")))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());

    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(identity.client_config())
        .map_err(|e| NetError::Tls(format!("QUIC client config: {e}")))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);

    // Resets and connection ids keyed by the secret: a process restarted on a dead one's
    // address resets the dead one's connections instead of ignoring them.
    let mut config = quinn::EndpointConfig::new(identity.reset_key());
    let cid_key = identity.connection_id_key();
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
        .max_udp_payload_size(MTU_UPPER_BOUND)
        .map_err(|e| NetError::Tls(format!("max_udp_payload_size: {e}")))?;

    let socket = udp_socket(bind)?;
    let mut endpoint = Endpoint::new(config, Some(server), socket, Arc::new(quinn::TokioRuntime))
        .map_err(|source| NetError::Io {
        context: format!("starting QUIC endpoint on {bind}"),
        source,
    })?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// The transport parameters of every quern connection.
fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
    t.mtu_discovery_config(Some(mtu))
        .receive_window(quinn::VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW))
        .stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_BIDI_STREAMS))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(64))
        .keep_alive_interval(Some(KEEP_ALIVE))
        // 10 s always fits a QUIC varint of milliseconds.
        .max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    t
}

/// A bound, non-blocking UDP socket with enlarged buffers.
fn udp_socket(bind: SocketAddr) -> Result<std::net::UdpSocket, NetError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let io = |what: &str| {
        let context = format!("{what} for QUIC endpoint on {bind}");
        move |source| NetError::Io { context, source }
    };
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))
        .map_err(io("creating UDP socket"))?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&bind.into()).map_err(io("binding"))?;
    socket
        .set_nonblocking(true)
        .map_err(io("making socket non-blocking"))?;
    Ok(socket.into())
}

/// If `err` is a failed TLS handshake (a QUIC CRYPTO_ERROR, raised locally or by the
/// peer), a description of it.
fn tls_failure(err: &ConnectionError) -> Option<String> {
    let (code, reason) = match err {
        ConnectionError::TransportError(e) => (u64::from(e.code), e.reason.clone()),
        ConnectionError::ConnectionClosed(c) => (
            u64::from(c.error_code),
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        _ => return None,
    };
    if !(0x100..=0x1ff).contains(&code) {
        return None;
    }
    let alert = code - 0x100;
    let what = if alert == 120 {
        "peer does not speak the quern/1 protocol (ALPN mismatch)"
    } else {
        "peer does not hold the cluster secret"
    };
    let side = if matches!(err, ConnectionError::TransportError(_)) {
        "rejected locally"
    } else {
        "rejected by peer"
    };
    let reason = if reason.is_empty() {
        format!("alert {alert}")
    } else {
        format!("alert {alert}: {reason}")
    };
    Some(format!("{what} (TLS {side}, {reason})"))
}

fn auth_error(addr: SocketAddr, why: String) -> NetError {
    NetError::Auth(format!("authentication with {addr} failed: {why}"))
}

/// Connects to the quern process at `addr` (server name [`SERVER_NAME`]).
///
/// A TLS failure — the peer does not hold the cluster secret, or it rejected ours —
/// is [`NetError::Auth`]; other failures are [`NetError::Connect`].
///
/// TLS 1.3 note: the client's handshake completes before the server has checked the
/// client certificate, so a server that rejects us surfaces as `Auth` either here or on
/// the first stream operation.
pub async fn connect(endpoint: &Endpoint, addr: SocketAddr) -> Result<quinn::Connection, NetError> {
    let connecting = endpoint
        .connect(addr, SERVER_NAME)
        .map_err(|source| NetError::ConnectSetup { addr, source })?;
    connecting
        .await
        .map_err(|source| match tls_failure(&source) {
            Some(why) => auth_error(addr, why),
            None => NetError::Connect { addr, source },
        })
}

/// Completes the server side of an incoming connection.
///
/// A client that cannot prove it holds the cluster secret fails with
/// [`NetError::Auth`]; no established connection is ever returned for it.
///
/// Pitfall: quinn only completes a handshake once the server awaits it, so the accept
/// loop must spawn a task per incoming connection that calls this, rather than awaiting
/// each handshake in the loop:
///
/// ```no_run
/// # async fn serve(endpoint: quinn::Endpoint) {
/// while let Some(incoming) = endpoint.accept().await {
///     tokio::spawn(async move {
///         match quern_shuffle::net::accept(incoming).await {
///             Ok(conn) => { /* serve conn */ }
///             Err(e) => eprintln!("{e}"),
///         }
///     });
/// }
/// # }
/// ```
pub async fn accept(incoming: quinn::Incoming) -> Result<quinn::Connection, NetError> {
    let addr = incoming.remote_address();
    let map = |source: ConnectionError| match tls_failure(&source) {
        Some(why) => auth_error(addr, why),
        None => NetError::Accept { addr, source },
    };
    incoming.accept().map_err(map)?.await.map_err(map)
}

/// Maps a read error, reporting a connection torn down by a TLS failure as `Auth`.
fn read_error(e: quinn::ReadError) -> NetError {
    if let quinn::ReadError::ConnectionLost(c) = &e {
        if let Some(why) = tls_failure(c) {
            return NetError::Auth(format!("connection lost: {why}"));
        }
    }
    NetError::Read(e)
}

/// Maps a write error, reporting a connection torn down by a TLS failure as `Auth`.
fn write_error(e: quinn::WriteError) -> NetError {
    if let quinn::WriteError::ConnectionLost(c) = &e {
        if let Some(why) = tls_failure(c) {
            return NetError::Auth(format!("connection lost: {why}"));
        }
    }
    NetError::Write(e)
}

/// Writes one control frame: `payload.len()` as `u32` little-endian, then `payload`.
pub async fn write_frame(send: &mut SendStream, payload: &[u8]) -> Result<(), NetError> {
    let len = u32::try_from(payload.len())
        .map_err(|_| NetError::Frame(format!("{} bytes exceed 4 GiB", payload.len())))?;
    send.write_all(&len.to_le_bytes())
        .await
        .map_err(write_error)?;
    send.write_all(payload).await.map_err(write_error)
}

/// Decodes a control-frame length prefix, rejecting lengths above `max_len`.
pub fn parse_frame_header(
    header: [u8; FRAME_HEADER_BYTES],
    max_len: usize,
) -> Result<usize, NetError> {
    let len = u32::from_le_bytes(header);
    match usize::try_from(len) {
        Ok(len) if len <= max_len => Ok(len),
        _ => Err(NetError::Frame(format!(
            "frame of {len} bytes exceeds the limit of {max_len}"
        ))),
    }
}

/// Decodes a segment length prefix, rejecting one that would take the running total
/// past `max_total`.
pub fn parse_segment_header(
    header: [u8; SEGMENT_HEADER_BYTES],
    received: u64,
    max_total: u64,
) -> Result<usize, NetError> {
    let len = u64::from_le_bytes(header);
    match (received.checked_add(len), usize::try_from(len)) {
        (Some(total), Ok(len)) if total <= max_total => Ok(len),
        _ => Err(NetError::Frame(format!(
            "segment of {len} bytes after {received} exceeds the limit of {max_total}"
        ))),
    }
}

/// Reads exactly `N` header bytes. `Ok(None)` if the stream finished cleanly before the
/// first byte; a stream ending inside the header is an error.
async fn read_header<const N: usize>(recv: &mut RecvStream) -> Result<Option<[u8; N]>, NetError> {
    let mut header = [0u8; N];
    let mut got = 0;
    while got < N {
        match recv.read(&mut header[got..]).await.map_err(read_error)? {
            Some(n) => got += n,
            None if got == 0 => return Ok(None),
            None => {
                return Err(NetError::Frame(format!(
                    "stream ended inside a {N}-byte length prefix after {got} bytes"
                )))
            }
        }
    }
    Ok(Some(header))
}

/// Reads `len` bytes into `buf` (cleared first; it grows only if its capacity is less
/// than `len`), chunk by chunk straight from quinn's receive buffers.
async fn read_body_into(
    recv: &mut RecvStream,
    len: usize,
    mut buf: AlignedVec<16>,
) -> Result<AlignedVec<16>, NetError> {
    buf.clear();
    buf.reserve_exact(len);
    while buf.len() < len {
        match recv
            .read_chunk(len - buf.len(), true)
            .await
            .map_err(read_error)?
        {
            Some(chunk) => buf.extend_from_slice(&chunk.bytes),
            None => {
                return Err(NetError::Frame(format!(
                    "stream ended after {} of {len} payload bytes",
                    buf.len()
                )))
            }
        }
    }
    Ok(buf)
}

/// Receives the segments sent by [`send_segments`] without buffering them: each segment's
/// bytes are handed to `sink(segment, bytes)` chunk by chunk as quinn delivers them (for
/// a reducer streaming a fetch that does not fit in memory to disk). Returns the length
/// of each segment. Lengths are checked as in [`recv_segments`]; an error from `sink`
/// stops the receive and is returned.
pub async fn recv_segments_streaming(
    recv: &mut RecvStream,
    max_total: u64,
    mut sink: impl FnMut(usize, &[u8]) -> Result<(), NetError>,
) -> Result<Vec<u64>, NetError> {
    let mut lens = Vec::new();
    let mut received = 0u64;
    while let Some(header) = read_header::<SEGMENT_HEADER_BYTES>(recv).await? {
        let len = parse_segment_header(header, received, max_total)?;
        let mut got = 0usize;
        while got < len {
            match recv.read_chunk(len - got, true).await.map_err(read_error)? {
                Some(chunk) => {
                    got += chunk.bytes.len();
                    sink(lens.len(), &chunk.bytes)?;
                }
                None => {
                    return Err(NetError::Frame(format!(
                        "stream ended after {got} of {len} payload bytes"
                    )))
                }
            }
        }
        received += len as u64;
        lens.push(len as u64);
    }
    Ok(lens)
}

/// Reads one control frame written by [`write_frame`].
///
/// Returns `Ok(None)` when the stream finished cleanly before a length prefix. A length
/// above `max_len` is rejected before anything is allocated; a stream ending inside a
/// frame is [`NetError::Frame`]. The payload lands in a 16-byte aligned buffer, ready
/// for [`decode`].
pub async fn read_frame(
    recv: &mut RecvStream,
    max_len: usize,
) -> Result<Option<AlignedVec<16>>, NetError> {
    let Some(header) = read_header::<FRAME_HEADER_BYTES>(recv).await? else {
        return Ok(None);
    };
    let len = parse_frame_header(header, max_len)?;
    read_body_into(recv, len, AlignedVec::new()).await.map(Some)
}

/// Serialises `msg` with rkyv into an aligned buffer.
pub fn encode<T>(msg: &T) -> Result<AlignedVec<16>, NetError>
where
    T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec<16>, ArenaHandle<'a>, BoxedError>>,
{
    rkyv::to_bytes::<BoxedError>(msg).map_err(|e| NetError::Encode(e.to_string()))
}

/// Validates `bytes` as an rkyv archive of `T` (an `Archived…` type) and returns a
/// reference into them. `bytes` must start 16-byte aligned (as [`read_frame`]'s buffers
/// do); misaligned or malformed input is [`NetError::Decode`], never a panic.
pub fn decode<T>(bytes: &[u8]) -> Result<&T, NetError>
where
    T: rkyv::Portable + for<'a> CheckBytes<HighValidator<'a, BoxedError>>,
{
    rkyv::access::<T, BoxedError>(bytes).map_err(|e| NetError::Decode(e.to_string()))
}

/// Sends bulk segments on `send` and finishes the stream: per segment a `u64`
/// little-endian length, then its bytes as-is. Each segment is handed to quinn as
/// [`Bytes`] (no userspace copy, so an mmap wrapped with `Bytes::from_owner` is sent
/// from the page cache).
///
/// Finishing only queues the end of the stream: keep the connection open until the
/// peer has read everything (e.g. until it replies or closes), or the tail may be lost.
pub async fn send_segments(send: &mut SendStream, segments: Vec<Bytes>) -> Result<(), NetError> {
    for segment in segments {
        let header = Bytes::copy_from_slice(&(segment.len() as u64).to_le_bytes());
        send.write_all_chunks(&mut [header, segment])
            .await
            .map_err(write_error)?;
    }
    send.finish()?;
    Ok(())
}

/// Receives the segments sent by [`send_segments`] until the stream finishes, each
/// into its own freshly allocated 16-byte aligned buffer (so the caller can validate its
/// blocks in place with [`crate::FrameIter`]).
///
/// Lengths are checked before allocating: segments totalling more than `max_total`
/// bytes, or a stream ending inside a segment, are [`NetError::Frame`].
///
/// Writing into never-touched memory costs a page fault per 4 KiB (on this machine
/// filling fresh memory runs at ~1.3–1.8 GB/s, slower than the transport); a reducer
/// that recycles its buffers should use [`recv_segments_reusing`].
pub async fn recv_segments(
    recv: &mut RecvStream,
    max_total: u64,
) -> Result<Vec<AlignedVec<16>>, NetError> {
    recv_segments_reusing(recv, max_total, &mut Vec::new()).await
}

/// As [`recv_segments`], but fills buffers taken from `spare` before allocating new
/// ones: for each segment, the last spare buffer whose capacity suffices (else the last
/// one, grown; else a new one). Unused spares stay in `spare`. On error, the buffers
/// taken so far are dropped.
pub async fn recv_segments_reusing(
    recv: &mut RecvStream,
    max_total: u64,
    spare: &mut Vec<AlignedVec<16>>,
) -> Result<Vec<AlignedVec<16>>, NetError> {
    let mut segments = Vec::new();
    let mut received = 0u64;
    while let Some(header) = read_header::<SEGMENT_HEADER_BYTES>(recv).await? {
        let len = parse_segment_header(header, received, max_total)?;
        let buf = match spare.iter().rposition(|b| b.capacity() >= len) {
            Some(i) => spare.swap_remove(i),
            None => spare.pop().unwrap_or_default(),
        };
        segments.push(read_body_into(recv, len, buf).await?);
        received += len as u64;
    }
    Ok(segments)
}
