//! Networking tests on loopback: authentication, framing, rkyv messages, bulk segments.

// Test code (helpers outside `#[test]` functions too): panicking on failure is the point.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quern_shuffle::net::{self, NetError};
use quern_shuffle::{BlockWriter, FrameIter, Secret};
use rkyv::util::AlignedVec;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(30);
const MAX_FRAME: usize = 1 << 20;

/// A small control message.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct TestMsg {
    id: u64,
    name: String,
    parts: Vec<u32>,
}

async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// An endpoint with its own freshly built identity.
fn node(secret: &Secret) -> (quinn::Endpoint, SocketAddr) {
    let ep = net::endpoint(loopback(), secret).unwrap();
    let addr = ep.local_addr().unwrap();
    (ep, addr)
}

/// Accept loop: one task per incoming connection (the handshake only completes once
/// accepted), reporting every accept result on `results` and serving accepted ones.
fn serve(ep: quinn::Endpoint) -> mpsc::UnboundedReceiver<Result<(), NetError>> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                match net::accept(incoming).await {
                    Ok(conn) => {
                        let _ = tx.send(Ok(()));
                        while let Ok((send, recv)) = conn.accept_bi().await {
                            tokio::spawn(handle_stream(send, recv));
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        }
    });
    rx
}

/// Test protocol: the first frame names the service. "echo" echoes frames until the
/// stream ends; "seg" receives segments and sends them back.
async fn handle_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let Ok(Some(cmd)) = net::read_frame(&mut recv, MAX_FRAME).await else {
        return;
    };
    match &cmd[..] {
        b"echo" => {
            while let Ok(Some(frame)) = net::read_frame(&mut recv, MAX_FRAME).await {
                if net::write_frame(&mut send, &frame).await.is_err() {
                    return;
                }
            }
            let _ = send.finish();
        }
        b"seg" => {
            if let Ok(segments) = net::recv_segments(&mut recv, 64 << 20).await {
                let back = segments.into_iter().map(Bytes::from_owner).collect();
                let _ = net::send_segments(&mut send, back).await;
            }
        }
        _ => {}
    }
    // Keep the stream's send side alive until the peer has read it all.
    let _ = send.stopped().await;
}

type Records = Vec<(Vec<u8>, Vec<u8>)>;

fn block_segment() -> (Vec<u8>, Records) {
    let records: Vec<_> = (0..5000u32)
        .map(|i| {
            (
                i.to_be_bytes().to_vec(),
                vec![(i % 251) as u8; (i % 40) as usize],
            )
        })
        .collect();
    let mut w = BlockWriter::new(4096);
    let mut out = Vec::new();
    for (k, v) in &records {
        w.push(k, v, &mut out).unwrap();
    }
    w.flush(&mut out).unwrap();
    (out, records)
}

async fn exercise(ep: &quinn::Endpoint, peer: SocketAddr) {
    let conn = bounded("connect", net::connect(ep, peer)).await.unwrap();

    // Control frames and rkyv messages.
    let (mut send, mut recv) = bounded("open_bi", conn.open_bi()).await.unwrap();
    net::write_frame(&mut send, b"echo").await.unwrap();
    let msg = TestMsg {
        id: 42,
        name: "map-7".into(),
        parts: (0..100).collect(),
    };
    let encoded = net::encode(&msg).unwrap();
    let frames: Vec<Vec<u8>> = vec![b"hello".to_vec(), vec![], encoded.to_vec(), vec![7; 70_000]];
    for f in &frames {
        net::write_frame(&mut send, f).await.unwrap();
    }
    send.finish().unwrap();
    for f in &frames {
        let got = bounded("read_frame", net::read_frame(&mut recv, MAX_FRAME))
            .await
            .unwrap()
            .expect("frame");
        assert_eq!(&got[..], &f[..]);
        if !got.is_empty() {
            assert_eq!(got.as_ptr() as usize % 16, 0);
        }
    }
    let archived = net::decode::<ArchivedTestMsg>(&encoded).unwrap();
    let back: TestMsg = rkyv::deserialize::<_, rkyv::rancor::BoxedError>(archived).unwrap();
    assert_eq!(back, msg);
    assert!(bounded("eos", net::read_frame(&mut recv, MAX_FRAME))
        .await
        .unwrap()
        .is_none());

    // Bulk segments: 0 B, 1 B, 8 MiB and a real block segment.
    let big: Vec<u8> = (0..8u32 << 20)
        .map(|i| i.wrapping_mul(2654435761) as u8)
        .collect();
    let (blocks, records) = block_segment();
    let segments = vec![
        Bytes::new(),
        Bytes::from_static(b"x"),
        Bytes::from(big.clone()),
        Bytes::from(blocks.clone()),
    ];
    let (mut send, mut recv) = bounded("open_bi", conn.open_bi()).await.unwrap();
    net::write_frame(&mut send, b"seg").await.unwrap();
    bounded("send_segments", net::send_segments(&mut send, segments))
        .await
        .unwrap();
    let got = bounded("recv_segments", net::recv_segments(&mut recv, 64 << 20))
        .await
        .unwrap();
    assert_eq!(got.len(), 4);
    assert!(got[0].is_empty());
    assert_eq!(&got[1][..], b"x");
    assert!(got[2][..] == big[..], "8 MiB segment differs");
    assert_eq!(&got[3][..], &blocks[..]);
    let mut decoded = Vec::new();
    for block in FrameIter::new(&got[3]) {
        for (k, v) in block.unwrap().iter() {
            decoded.push((k.to_vec(), v.to_vec()));
        }
    }
    assert_eq!(decoded, records);
    conn.close(0u32.into(), b"done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_secret_connects_both_ways_and_transfers() {
    let secret = Secret::generate().unwrap();
    let (a, a_addr) = node(&secret);
    let (b, b_addr) = node(&secret);
    let mut a_accepts = serve(a.clone());
    let mut b_accepts = serve(b.clone());

    exercise(&a, b_addr).await;
    bounded("b accepted", b_accepts.recv())
        .await
        .unwrap()
        .unwrap();
    exercise(&b, a_addr).await;
    bounded("a accepted", a_accepts.recv())
        .await
        .unwrap()
        .unwrap();
}

fn assert_auth(err: &NetError, addr: Option<SocketAddr>) {
    let NetError::Auth(msg) = err else {
        panic!("expected NetError::Auth, got {err:?}");
    };
    eprintln!("auth error: {msg}");
    assert!(
        msg.contains("does not hold the cluster secret"),
        "message: {msg}"
    );
    if let Some(addr) = addr {
        assert!(msg.contains(&addr.to_string()), "message: {msg}");
    }
}

/// `client` connects to `server`, which hold different secrets: both sides fail with
/// `Auth`, and the server never yields a connection.
async fn refused(client: &quinn::Endpoint, server: quinn::Endpoint) {
    let server_addr = server.local_addr().unwrap();
    let mut accepts = serve(server);
    let err = bounded("connect", net::connect(client, server_addr))
        .await
        .expect_err("handshake with a different secret must fail");
    assert_auth(&err, Some(server_addr));
    let server_err = bounded("server accept", accepts.recv())
        .await
        .unwrap()
        .expect_err("server must not establish the connection");
    assert_auth(&server_err, Some(client.local_addr().unwrap()));
    // Nothing else arrives.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), accepts.recv())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_with_wrong_secret_is_refused() {
    let (good, _) = node(&Secret::generate().unwrap());
    let (bad, _) = node(&Secret::generate().unwrap());
    refused(&bad, good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_with_wrong_secret_is_refused() {
    let secret = Secret::generate().unwrap();
    let (good, _) = node(&secret);
    let (bad_server, _) = node(&Secret::generate().unwrap());
    refused(&good, bad_server).await;
}

/// A client that skips server verification: the server's own check must stop it.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impostor_client_is_rejected_by_the_server() {
    let (server, server_addr) = node(&Secret::generate().unwrap());
    let mut accepts = serve(server);
    let provider = quern_shuffle::auth::crypto_provider();

    // A self-signed certificate for "quern", and no certificate at all.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["quern".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    for with_cert in [true, false] {
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider.clone())));
        let mut tls = if with_cert {
            builder
                .with_client_auth_cert(vec![cert.der().clone()], key_der.clone_key())
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        tls.alpn_protocols = vec![quern_shuffle::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let client = quinn::Endpoint::client(loopback()).unwrap();
        let config = quinn::ClientConfig::new(Arc::new(crypto));
        let outcome = bounded("impostor connect", async {
            let conn = client
                .connect_with(config, server_addr, "quern")
                .unwrap()
                .await?;
            // TLS 1.3: the client may think it is connected before the server has
            // checked its certificate; the server then closes the connection.
            Err::<(), _>(conn.closed().await)
        })
        .await;
        let err = outcome.expect_err("impostor must be disconnected");
        assert!(
            matches!(err, quinn::ConnectionError::ConnectionClosed(ref c)
                if (0x100..0x200).contains(&u64::from(c.error_code))),
            "expected a TLS alert from the server, got {err:?}"
        );
        let server_err = bounded("server accept", accepts.recv())
            .await
            .unwrap()
            .expect_err("server must not establish an impostor's connection");
        assert_auth(&server_err, Some(client.local_addr().unwrap()));
    }
}

/// A connected pair of endpoints for stream-level tests.
async fn pair() -> (quinn::Connection, quinn::Connection) {
    let secret = Secret::generate().unwrap();
    let (server, server_addr) = node(&secret);
    let (client, _) = node(&secret);
    let accepting = tokio::spawn(async move {
        let incoming = server.accept().await.expect("incoming");
        net::accept(incoming).await
    });
    let c = bounded("connect", net::connect(&client, server_addr))
        .await
        .unwrap();
    let s = bounded("accept", accepting).await.unwrap().unwrap();
    (c, s)
}

/// Sends `bytes` raw on a fresh unidirectional stream (finished or not) and returns
/// the receiving end.
async fn raw_stream(
    c: &quinn::Connection,
    s: &quinn::Connection,
    bytes: &[u8],
    finish: bool,
) -> (quinn::SendStream, quinn::RecvStream) {
    let mut send = c.open_uni().await.unwrap();
    send.write_all(bytes).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    let recv = bounded("accept_uni", s.accept_uni()).await.unwrap();
    (send, recv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_lengths_are_rejected_before_the_payload_arrives() {
    let (c, s) = pair().await;
    // Header claims 4 GiB; no payload is ever sent and the stream stays open, so only
    // an up-front check can answer.
    let (_keep, mut recv) = raw_stream(&c, &s, &u32::MAX.to_le_bytes(), false).await;
    let err = bounded("read_frame", net::read_frame(&mut recv, MAX_FRAME))
        .await
        .unwrap_err();
    assert!(
        matches!(err, NetError::Frame(ref m) if m.contains("exceeds")),
        "{err:?}"
    );

    // A segment claiming 2^64-1 bytes (allocating it would abort the process).
    let (_keep, mut recv) = raw_stream(&c, &s, &u64::MAX.to_le_bytes(), false).await;
    let err = bounded("recv_segments", net::recv_segments(&mut recv, 1 << 30))
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Frame(_)), "{err:?}");

    // Segments that only together exceed the limit.
    let mut wire = Vec::new();
    for _ in 0..2 {
        wire.extend_from_slice(&600u64.to_le_bytes());
        wire.extend_from_slice(&[1u8; 600]);
    }
    let (_keep, mut recv) = raw_stream(&c, &s, &wire, true).await;
    let err = bounded("recv_segments", net::recv_segments(&mut recv, 1000))
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Frame(_)), "{err:?}");

    // Truncated header and truncated payload.
    let (_keep, mut recv) = raw_stream(&c, &s, &[5, 0], true).await;
    assert!(matches!(
        net::read_frame(&mut recv, MAX_FRAME).await,
        Err(NetError::Frame(_))
    ));
    let (_keep, mut recv) = raw_stream(&c, &s, &[5, 0, 0, 0, 1, 2], true).await;
    assert!(matches!(
        net::read_frame(&mut recv, MAX_FRAME).await,
        Err(NetError::Frame(_))
    ));
}

/// What `read_frame` must yield for a finished stream holding `bytes`.
fn frame_model(bytes: &[u8], max_len: usize) -> (Vec<Vec<u8>>, bool) {
    let mut frames = Vec::new();
    let mut rest = bytes;
    loop {
        if rest.is_empty() {
            return (frames, false);
        }
        if rest.len() < 4 {
            return (frames, true);
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > max_len || rest.len() - 4 < len {
            return (frames, true);
        }
        frames.push(rest[4..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
}

/// Arbitrary bytes on a real stream: `read_frame` and `decode` never panic, and yield
/// exactly the frames the wire holds, then a clean `Frame` error or end of stream.
#[test]
fn prop_malformed_frames_error_cleanly() {
    use proptest::prelude::*;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (c, s) = rt.block_on(pair());
    // Arbitrary bytes, or a sequence of plausible frames (some lying about length).
    let frame =
        (0u32..80, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(len, body)| {
            let mut v = len.to_le_bytes().to_vec();
            v.extend_from_slice(&body);
            v
        });
    let wire = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(frame, 0..6).prop_map(|fs| fs.concat()),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(200));
    runner
        .run(&wire, |bytes| {
            let max_len = 48;
            let (want, want_err) = frame_model(&bytes, max_len);
            let (got, got_err) = rt.block_on(async {
                let (_keep, mut recv) = raw_stream(&c, &s, &bytes, true).await;
                let mut got = Vec::new();
                loop {
                    match bounded("read_frame", net::read_frame(&mut recv, max_len)).await {
                        Ok(Some(f)) => {
                            let _ = net::decode::<ArchivedTestMsg>(&f);
                            got.push(f.to_vec());
                        }
                        Ok(None) => return (got, false),
                        Err(NetError::Frame(_)) => return (got, true),
                        Err(e) => panic!("unexpected error {e:?}"),
                    }
                }
            });
            prop_assert_eq!(got, want);
            prop_assert_eq!(got_err, want_err);
            // The same bytes as segments: bounded, never panics.
            let seg = rt.block_on(async {
                let (_keep, mut recv) = raw_stream(&c, &s, &bytes, true).await;
                bounded("recv_segments", net::recv_segments(&mut recv, 200)).await
            });
            if let Err(e) = seg {
                prop_assert!(matches!(e, NetError::Frame(_)), "{e:?}");
            }
            Ok(())
        })
        .unwrap();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Arbitrary bytes, aligned or not, never panic `decode`.
    #[test]
    fn prop_decode_garbage_never_panics(bytes in proptest::collection::vec(0u8..=255, 0..256), shift in 0usize..16) {
        let mut buf = AlignedVec::<16>::new();
        buf.extend_from_slice(&[0u8; 16]);
        buf.extend_from_slice(&bytes);
        let _ = net::decode::<ArchivedTestMsg>(&buf[16..]);
        let _ = net::decode::<ArchivedTestMsg>(&buf[shift..]);
    }

    /// A valid message with one byte flipped decodes to something or errors cleanly.
    #[test]
    fn prop_corrupted_message_is_safe(id in 0u64..u64::MAX, name in ".{0,20}", pos in 0usize..1000, flip in 1u8..=255) {
        let msg = TestMsg { id, name, parts: vec![1, 2, 3] };
        let mut bytes = net::encode(&msg).unwrap();
        let pos = pos % bytes.len();
        bytes[pos] ^= flip;
        let _ = net::decode::<ArchivedTestMsg>(&bytes);
    }

    /// The pure header check accepts exactly the lengths within the limit.
    #[test]
    fn prop_frame_header(header in proptest::array::uniform4(0u8..=255), max_len in 0usize..1 << 33) {
        let len = u32::from_le_bytes(header) as usize;
        match net::parse_frame_header(header, max_len) {
            Ok(n) => proptest::prop_assert!(n == len && len <= max_len),
            Err(NetError::Frame(_)) => proptest::prop_assert!(len > max_len),
            Err(e) => proptest::prop_assert!(false, "{e:?}"),
        }
    }
}

#[test]
fn endpoint_outside_a_runtime_is_an_error() {
    let secret = Secret::generate().unwrap();
    assert!(matches!(
        net::endpoint(loopback(), &secret),
        Err(NetError::NoRuntime)
    ));
}

#[test]
fn secret_file_round_trip_mode_and_errors() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.secret");
    let secret = Secret::generate().unwrap();
    secret.write_file(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n') && text.trim().len() == 64);
    assert_eq!(Secret::from_file(&path).unwrap().to_hex(), secret.to_hex());

    // Overwriting a world-readable file resets it to 0600.
    let loose = dir.path().join("loose.secret");
    std::fs::write(&loose, "old").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    secret.write_file(&loose).unwrap();
    let mode = std::fs::metadata(&loose).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Bad contents: the error names the file.
    for (name, contents) in [
        ("short", "abcdef0123456789abcdef0123456789\n".to_string()),
        ("empty", "  \n".to_string()),
        ("nothex", format!("{}zz", "00".repeat(32))),
    ] {
        let bad = dir.path().join(name);
        std::fs::write(&bad, contents).unwrap();
        let err = Secret::from_file(&bad).unwrap_err();
        assert!(matches!(err, NetError::Secret(_)), "{err:?}");
        assert!(
            err.to_string().contains(&bad.display().to_string()),
            "{err}"
        );
    }
    // A weak file says how to make a good one.
    let weak = dir.path().join("weak");
    std::fs::write(&weak, "password1234").unwrap();
    let err = Secret::from_file(&weak).unwrap_err().to_string();
    assert!(
        err.contains("too weak") && err.contains("quern secret"),
        "{err}"
    );

    // Any file of enough entropy works, as written by other tools: base64 text, raw bytes.
    let base64 = dir.path().join("base64.secret");
    std::fs::write(&base64, "q4Jx9+0vTz3mLr8WcYbN2kDsHfEa7uPiG1oV5nQwZtA=\n").unwrap();
    let raw = dir.path().join("raw.secret");
    std::fs::write(&raw, (0u8..=255).rev().collect::<Vec<u8>>()).unwrap();
    for good in [&base64, &raw] {
        let a = Secret::from_file(good).unwrap_or_else(|e| panic!("{}: {e}", good.display()));
        let b = Secret::from_file(good).unwrap();
        assert_eq!(a.to_hex(), b.to_hex(), "the same file, the same secret");
        assert_ne!(a.to_hex(), secret.to_hex());
    }

    let missing = dir.path().join("missing");
    let err = Secret::from_file(&missing).unwrap_err();
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_segments_reusing_fills_spare_buffers() {
    let (c, s) = pair().await;
    let segments = [vec![1u8; 1000], vec![2u8; 300_000], vec![], vec![3u8; 5]];
    let mut spare: Vec<AlignedVec<16>> = [64usize, 1 << 20]
        .iter()
        .map(|&n| AlignedVec::with_capacity(n))
        .collect();
    let big_spare = spare[1].as_ptr();
    let mut send = c.open_uni().await.unwrap();
    let to_send = segments.iter().cloned().map(Bytes::from).collect();
    bounded("send", net::send_segments(&mut send, to_send))
        .await
        .unwrap();
    let mut recv = bounded("accept_uni", s.accept_uni()).await.unwrap();
    let got = bounded(
        "recv",
        net::recv_segments_reusing(&mut recv, 1 << 20, &mut spare),
    )
    .await
    .unwrap();
    assert_eq!(got.len(), segments.len());
    for (g, want) in got.iter().zip(&segments) {
        assert_eq!(&g[..], &want[..]);
    }
    // The first segment lands in the only spare large enough; the others use what is left.
    assert_eq!(got[0].as_ptr(), big_spare);
    assert!(spare.is_empty());
}

/// A server on its own runtime, serving `port` (0: any) until the runtime is dropped. Its
/// connections then vanish without a CONNECTION_CLOSE, as when its process is SIGKILLed.
fn server_on_own_runtime(secret: &Secret, port: u16) -> (tokio::runtime::Runtime, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let bind: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let addr = rt.block_on(async {
        let ep = net::endpoint(bind, secret).unwrap();
        let addr = ep.local_addr().unwrap();
        drop(serve(ep));
        addr
    });
    (rt, addr)
}

/// Every process of a cluster derives its stateless-reset key from the secret, so a server
/// restarted on a dead one's address resets the dead one's connections at their next
/// packet: the peer sees `Reset`, not an idle timeout 10 s later.
#[test]
fn a_restarted_server_resets_the_dead_ones_connections() {
    let secret = Secret::generate().unwrap();
    let (dead, addr) = server_on_own_runtime(&secret, 0);
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (client, conn) = client_rt.block_on(async {
        let (client, _) = node(&secret);
        let conn = bounded("connect", net::connect(&client, addr))
            .await
            .unwrap();
        (client, conn)
    });
    // The dead server says nothing: its tasks stop with its runtime, its socket closes.
    drop(dead);
    let (_restarted, again) = server_on_own_runtime(&secret, addr.port());
    assert_eq!(again, addr);
    let err = client_rt.block_on(async {
        // Anything the client sends now reaches the restarted server.
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        let _ = net::write_frame(&mut send, b"anyone there?").await;
        bounded("the connection ends", conn.closed()).await
    });
    assert!(
        matches!(err, quinn::ConnectionError::Reset),
        "expected a stateless reset, got {err:?}"
    );
    drop(client);
}
