//! The cluster secret and the mutual TLS 1.3 identity derived from it.
//!
//! Every quern process of a cluster holds the same [`Secret`]. From it each process
//! derives, deterministically and on its own, the same **cluster CA**: an Ed25519 key
//! whose 32-byte seed is `HKDF-SHA256(secret, info = "quern cluster CA v1")`, and a
//! self-signed certificate with the fixed subject `CN=quern cluster CA`. The CA's
//! certificate bytes may differ between processes (rcgen picks the serial number), but
//! what a verifier trusts — subject name and public key — is identical everywhere.
//!
//! Each process then makes a fresh Ed25519 **node key** and a node certificate
//! (`CN=quern node`, DNS SAN `quern`) signed by the CA. Servers require a client
//! certificate chaining to the CA and clients accept only server certificates chaining
//! to it, so a peer that does not hold the secret cannot complete a handshake in either
//! direction. Only TLS 1.3 is offered, the ALPN protocol is [`ALPN`], and the crypto
//! provider is always rustls' `ring` provider (passed explicitly, never the process-wide
//! default).

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519,
};
use ring::rand::SecureRandom;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::net::NetError;

/// Bytes in a freshly generated secret, and the minimum a secret file must hold.
pub const SECRET_LEN: usize = 32;

/// Distinct byte values a passphrase secret file must hold (32 random bytes in base64 hold
/// about 27; `aaaa…` or `0101…` hold one or two).
pub const MIN_DISTINCT_BYTES: usize = 12;
/// The TLS server name every node certificate carries and every client connects to.
pub const SERVER_NAME: &str = "quern";
/// The ALPN protocol of quern's QUIC connections.
pub const ALPN: &[u8] = b"quern/1";
/// Subject common name of the cluster CA certificate.
pub const CA_COMMON_NAME: &str = "quern cluster CA";
/// Subject common name of node certificates.
pub const NODE_COMMON_NAME: &str = "quern node";

/// HKDF `info` for the CA key seed; bump the version to rotate every derived CA.
const CA_KDF_INFO: &[u8] = b"quern cluster CA v1";
/// HKDF `info` for the QUIC stateless-reset key.
const RESET_KDF_INFO: &[u8] = b"quern stateless reset v1";
/// HKDF `info` for the key of the connection-id checksum.
const CID_KDF_INFO: &[u8] = b"quern connection ids v1";
/// HKDF salt (a fixed domain separator; the secret carries the entropy).
const CA_KDF_SALT: &[u8] = b"quern";
/// PKCS#8 v1 DER prefix of an Ed25519 private key; the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The cluster secret: at least [`SECRET_LEN`] random bytes shared by every process of a
/// cluster. Its `Debug` output never shows the bytes, and the bytes are overwritten when
/// it is dropped.
#[derive(Clone)]
pub struct Secret {
    bytes: Vec<u8>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes, redacted)", self.bytes.len())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.bytes.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&self.bytes);
    }
}

impl Secret {
    /// A new random secret of [`SECRET_LEN`] bytes from the system CSPRNG.
    pub fn generate() -> Result<Secret, NetError> {
        let mut bytes = vec![0u8; SECRET_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| NetError::Tls("system random number generator failed".into()))?;
        Ok(Secret { bytes })
    }

    /// Parses a secret written as hex text (surrounding whitespace ignored). It must
    /// encode at least [`SECRET_LEN`] bytes; otherwise [`NetError::Secret`].
    pub fn from_hex(text: &str) -> Result<Secret, NetError> {
        parse_hex(text)
            .map(|bytes| Secret { bytes })
            .map_err(|why| NetError::Secret(format!("cluster secret is not valid: {why}")))
    }

    /// Reads a secret file. A file of hex digits (what `quern secret` writes; whitespace
    /// trimmed) must encode at least [`SECRET_LEN`] bytes. Any other file is taken as a
    /// passphrase, bytes as they are (surrounding ASCII whitespace trimmed), as Spark takes
    /// any string: e.g. `head -c 32 /dev/urandom | base64`. It must hold at least
    /// [`SECRET_LEN`] bytes and [`MIN_DISTINCT_BYTES`] distinct byte values, so that an
    /// obviously guessable file is refused. Errors name the file and say how to make one.
    pub fn from_file(path: &Path) -> Result<Secret, NetError> {
        let bytes = std::fs::read(path).map_err(|source| NetError::Io {
            context: format!("reading cluster secret file {}", path.display()),
            source,
        })?;
        let invalid = |why: String| {
            NetError::Secret(format!(
                "cluster secret file {} is not valid: {why}; make one with `quern secret {}` \
                 (or put at least {SECRET_LEN} random bytes in it, e.g. \
                 `head -c {SECRET_LEN} /dev/urandom | base64 > {}`)",
                path.display(),
                path.display(),
                path.display()
            ))
        };
        let text = bytes.trim_ascii();
        if !text.is_empty() && text.iter().all(u8::is_ascii_hexdigit) {
            let hex = std::str::from_utf8(text).map_err(|e| invalid(e.to_string()))?;
            return parse_hex(hex)
                .map(|bytes| Secret { bytes })
                .map_err(invalid);
        }
        let distinct = {
            let mut seen = [false; 256];
            text.iter().for_each(|&b| seen[b as usize] = true);
            seen.iter().filter(|&&s| s).count()
        };
        if text.len() < SECRET_LEN || distinct < MIN_DISTINCT_BYTES {
            return Err(invalid(format!(
                "too weak: {} bytes with {distinct} distinct values (need at least {SECRET_LEN} \
                 bytes and {MIN_DISTINCT_BYTES} distinct values)",
                text.len()
            )));
        }
        Ok(Secret {
            bytes: text.to_vec(),
        })
    }

    /// Writes the secret as hex plus a newline to `path`, creating it with mode 0600
    /// (and resetting the mode to 0600 if the file already existed).
    pub fn write_file(&self, path: &Path) -> Result<(), NetError> {
        let io = |source| NetError::Io {
            context: format!("writing cluster secret file {}", path.display()),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        let mut text = self.to_hex();
        text.push('\n');
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// The secret as lowercase hex (for writing it somewhere safe; never log this).
    pub fn to_hex(&self) -> String {
        self.bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The 32-byte Ed25519 seed of the cluster CA key: HKDF-SHA256 of the secret.
    fn ca_seed(&self) -> Result<[u8; 32], NetError> {
        self.derive(CA_KDF_INFO)
    }

    /// The key of QUIC stateless resets, the same in every process holding the secret.
    ///
    /// A process restarted on a dead one's address (a local cluster's coordinator) then
    /// answers the dead one's connections with a reset their peers accept, so they learn
    /// at their next packet that it is gone, not after the idle timeout. Without the secret
    /// a reset cannot be forged.
    pub fn reset_key(&self) -> Result<ring::hmac::Key, NetError> {
        let key = self.derive(RESET_KDF_INFO)?;
        Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key))
    }

    /// The key of the checksum in every connection id (quinn's hashed ids), the same in
    /// every process holding the secret, so that a restarted process accepts the dead
    /// one's ids as its own and answers them with a reset (see [`Secret::reset_key`]).
    pub fn connection_id_key(&self) -> Result<u64, NetError> {
        let key = self.derive(CID_KDF_INFO)?;
        let mut first = [0u8; 8];
        first.copy_from_slice(&key[..8]);
        Ok(u64::from_le_bytes(first))
    }

    /// 32 bytes of HKDF-SHA256 of the secret, for the use `info` names.
    fn derive(&self, info: &'static [u8]) -> Result<[u8; 32], NetError> {
        struct Len32;
        impl ring::hkdf::KeyType for Len32 {
            fn len(&self) -> usize {
                32
            }
        }
        let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, CA_KDF_SALT).extract(&self.bytes);
        let mut out = [0u8; 32];
        let infos = [info];
        prk.expand(&infos, Len32)
            .and_then(|okm| okm.fill(&mut out))
            .map_err(|_| NetError::Tls("HKDF expansion of the cluster secret failed".into()))?;
        Ok(out)
    }
}

/// Decodes hex text (whitespace trimmed) of at least [`SECRET_LEN`] bytes.
fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    if text.len() % 2 != 0 {
        return Err(format!("odd number of hex digits ({})", text.len()));
    }
    let bytes = text
        .as_bytes()
        .chunks_exact(2)
        .enumerate()
        .map(|(i, pair)| match (hex_digit(pair[0]), hex_digit(pair[1])) {
            (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
            _ => Err(format!("invalid hex digit near offset {}", 2 * i)),
        })
        .collect::<Result<Vec<u8>, String>>()?;
    if bytes.len() < SECRET_LEN {
        return Err(format!(
            "too short: {} hex digits, need at least {}",
            text.len(),
            2 * SECRET_LEN
        ));
    }
    Ok(bytes)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn tls_err(what: &str) -> impl FnOnce(rcgen::Error) -> NetError + '_ {
    move |e| NetError::Tls(format!("{what}: {e}"))
}

/// The crypto provider quern uses everywhere: rustls' `ring` provider.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parameters of the cluster CA certificate: fixed subject, CA basic constraints.
fn ca_params() -> Result<CertificateParams, NetError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err("CA params"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// A process's TLS identity in the cluster: the derived CA and this process's node
/// certificate, as ready-made rustls server and client configurations.
pub struct Identity {
    reset_key: Arc<ring::hmac::Key>,
    connection_id_key: u64,
    ca_cert: CertificateDer<'static>,
    node_cert: CertificateDer<'static>,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("ca_cert_bytes", &self.ca_cert.len())
            .field("node_cert_bytes", &self.node_cert.len())
            .field("alpn", &String::from_utf8_lossy(ALPN))
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Derives the cluster CA from `secret`, makes a fresh node key and certificate
    /// signed by it, and builds the TLS 1.3 server (client auth required) and client
    /// configurations that trust only that CA.
    pub fn new(secret: &Secret) -> Result<Identity, NetError> {
        let provider = crypto_provider();

        // Cluster CA: deterministic key from the secret, fixed subject.
        let mut pkcs8 = Vec::with_capacity(48);
        pkcs8.extend_from_slice(&ED25519_PKCS8_PREFIX);
        pkcs8.extend_from_slice(&secret.ca_seed()?);
        let ca_key =
            KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(pkcs8), &PKCS_ED25519)
                .map_err(tls_err("deriving the cluster CA key"))?;
        let ca_params = ca_params()?;
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(tls_err("self-signing the cluster CA"))?
            .der()
            .clone();
        let issuer = Issuer::new(ca_params, ca_key);

        // This process's node certificate, signed by the CA.
        let node_key =
            KeyPair::generate_for(&PKCS_ED25519).map_err(tls_err("generating the node key"))?;
        let mut node_params = CertificateParams::new(vec![SERVER_NAME.to_string()])
            .map_err(tls_err("node params"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, NODE_COMMON_NAME);
        node_params.distinguished_name = dn;
        node_params.is_ca = IsCa::ExplicitNoCa;
        node_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        node_params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        node_params.use_authority_key_identifier_extension = true;
        let node_cert = node_params
            .signed_by(&node_key, &issuer)
            .map_err(tls_err("signing the node certificate"))?
            .der()
            .clone();
        let node_key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(node_key.serialize_der()));

        let mut roots = RootCertStore::empty();
        roots
            .add(ca_cert.clone())
            .map_err(|e| NetError::Tls(format!("adding the cluster CA as trust anchor: {e}")))?;
        let roots = Arc::new(roots);
        let rustls_err = |what: &'static str| move |e| NetError::Tls(format!("{what}: {e}"));

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| NetError::Tls(format!("building the client verifier: {e}")))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(rustls_err("server TLS versions"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![node_cert.clone()], node_key_der.clone_key())
            .map_err(rustls_err("server certificate"))?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        server.max_early_data_size = 0;

        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(rustls_err("client TLS versions"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![node_cert.clone()], node_key_der)
            .map_err(rustls_err("client certificate"))?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        client.enable_early_data = false;

        Ok(Identity {
            reset_key: Arc::new(secret.reset_key()?),
            connection_id_key: secret.connection_id_key()?,
            ca_cert,
            node_cert,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The key of QUIC stateless resets (see [`Secret::reset_key`]).
    pub fn reset_key(&self) -> Arc<ring::hmac::Key> {
        self.reset_key.clone()
    }

    /// The key of connection-id checksums (see [`Secret::connection_id_key`]).
    pub fn connection_id_key(&self) -> u64 {
        self.connection_id_key
    }

    /// The derived cluster CA certificate (DER). Its subject and key are the same in every
    /// process holding the secret; serial and signature bytes may differ.
    pub fn ca_cert(&self) -> &CertificateDer<'static> {
        &self.ca_cert
    }

    /// This process's node certificate (DER), signed by the cluster CA.
    pub fn node_cert(&self) -> &CertificateDer<'static> {
        &self.node_cert
    }

    /// rustls server configuration: TLS 1.3 only, client certificate required and
    /// verified against the cluster CA, ALPN [`ALPN`].
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// rustls client configuration: trusts only the cluster CA, presents the node
    /// certificate, TLS 1.3 only, ALPN [`ALPN`].
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secret_bytes() {
        let s = Secret::from_hex(&"ab".repeat(32)).unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("ab"), "{shown}");
        assert!(!shown.contains("171"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let s = Secret::generate().unwrap();
        assert_eq!(s.to_hex().len(), 64);
        assert_eq!(Secret::from_hex(&s.to_hex()).unwrap().bytes, s.bytes);
        assert_eq!(
            Secret::from_hex(&format!("  {}\n", s.to_hex().to_uppercase()))
                .unwrap()
                .bytes,
            s.bytes
        );
        let err = |t: &str| Secret::from_hex(t).unwrap_err().to_string();
        assert!(err(&"a".repeat(63)).contains("odd"));
        assert!(err(&"ab".repeat(16)).contains("too short"));
        assert!(err(&format!("{}zz", "ab".repeat(32))).contains("invalid hex"));
    }

    #[test]
    fn ca_seed_is_deterministic_and_secret_dependent() {
        let a = Secret::from_hex(&"01".repeat(32)).unwrap();
        let b = Secret::from_hex(&"02".repeat(32)).unwrap();
        assert_eq!(a.ca_seed().unwrap(), a.clone().ca_seed().unwrap());
        assert_ne!(a.ca_seed().unwrap(), b.ca_seed().unwrap());
    }

    #[test]
    fn identities_from_one_secret_share_the_ca_key() {
        let s = Secret::generate().unwrap();
        let (i1, i2) = (Identity::new(&s).unwrap(), Identity::new(&s).unwrap());
        // Same trust anchor (subject + SPKI) even if serials differ.
        let a1 = webpki_anchor(i1.ca_cert());
        let a2 = webpki_anchor(i2.ca_cert());
        assert_eq!(a1, a2);
        // Fresh node keys per identity.
        assert_ne!(i1.node_cert(), i2.node_cert());
        let other = Identity::new(&Secret::generate().unwrap()).unwrap();
        assert_ne!(webpki_anchor(other.ca_cert()), a1);
    }

    /// Runs a TLS handshake between a client and a server identity in memory.
    fn handshake(client: &Identity, server: &Identity) -> Result<(), rustls::Error> {
        let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).unwrap();
        let mut c = rustls::ClientConnection::new(client.client_config(), name)?;
        let mut s = rustls::ServerConnection::new(server.server_config())?;
        let mut buf = Vec::new();
        for _ in 0..20 {
            buf.clear();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut &buf[..]).unwrap();
            let server_result = s.process_new_packets();
            buf.clear();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            server_result?;
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                assert_eq!(c.alpn_protocol(), Some(ALPN));
                assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
                assert!(s.peer_certificates().is_some_and(|p| p.len() == 1));
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn separately_built_identities_handshake_only_with_the_same_secret() {
        let s = Secret::generate().unwrap();
        let (a, b) = (Identity::new(&s).unwrap(), Identity::new(&s).unwrap());
        handshake(&a, &b).unwrap();
        handshake(&b, &a).unwrap();
        let stranger = Identity::new(&Secret::generate().unwrap()).unwrap();
        assert!(handshake(&stranger, &a).is_err());
        assert!(handshake(&a, &stranger).is_err());
    }

    fn webpki_anchor(cert: &CertificateDer<'_>) -> (Vec<u8>, Vec<u8>) {
        let mut store = RootCertStore::empty();
        store.add(cert.clone()).unwrap();
        let anchor = &store.roots[0];
        (
            anchor.subject.as_ref().to_vec(),
            anchor.subject_public_key_info.as_ref().to_vec(),
        )
    }
}
