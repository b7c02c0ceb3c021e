//! Certificates and TLS for the transport: the coordinator makes a
//! self-signed certificate (or reuses the one it kept, so its join string
//! survives a restart), and nodes pin it by the SHA-256 of its DER (from the
//! join string) instead of trusting any authority.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub const ALPN: &[u8] = b"hypergpu/1";
/// The name clients ask for; identity comes from the pinned fingerprint.
pub const SERVER_NAME: &str = "hypergpu";

/// The coordinator's certificate and key.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    pub fingerprint: String,
}

impl Identity {
    pub fn self_signed() -> Result<Self> {
        let made = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .map_err(|e| Error::Transport(format!("cannot make a certificate: {e}")))?;
        let cert = made.cert.der().clone();
        Ok(Identity {
            fingerprint: fingerprint(&cert),
            cert,
            key: PrivatePkcs8KeyDer::from(made.key_pair.serialize_der()),
        })
    }

    /// An identity kept from an earlier run: its certificate and PKCS#8 key (DER).
    /// The pair is checked by building a server configuration from it.
    pub fn from_der(cert: Vec<u8>, key: Vec<u8>) -> Result<Self> {
        let id = Identity {
            fingerprint: fingerprint(&cert),
            cert: CertificateDer::from(cert),
            key: PrivatePkcs8KeyDer::from(key),
        };
        server_crypto(&id).map_err(|e| {
            Error::InvalidArgument(format!(
                "the kept certificate and key do not make an identity: {e}"
            ))
        })?;
        Ok(id)
    }

    /// The certificate and PKCS#8 key as DER, to keep beside a run's checkpoints.
    pub fn to_der(&self) -> (Vec<u8>, Vec<u8>) {
        (self.cert.to_vec(), self.key.secret_pkcs8_der().to_vec())
    }
}

/// Lower-case hex SHA-256 of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn server_crypto(id: &Identity) -> Result<Arc<QuicServerConfig>> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(
            vec![id.cert.clone()],
            PrivateKeyDer::Pkcs8(id.key.clone_key()),
        )
        .map_err(tls_err)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(QuicServerConfig::try_from(cfg).map_err(tls_err)?))
}

/// What the pinning verifier saw when it refused a certificate, so the
/// client can report a fingerprint mismatch rather than a bare TLS alert.
pub type Mismatch = Arc<Mutex<Option<String>>>;

pub fn client_crypto(expected: &str) -> Result<(Arc<QuicClientConfig>, Mismatch)> {
    let mismatch = Mismatch::default();
    let verifier = PinnedCert {
        expected: expected.to_ascii_lowercase(),
        provider: provider(),
        mismatch: mismatch.clone(),
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok((
        Arc::new(QuicClientConfig::try_from(cfg).map_err(tls_err)?),
        mismatch,
    ))
}

fn tls_err(e: impl std::fmt::Display) -> Error {
    Error::Transport(format!("TLS setup failed: {e}"))
}

/// Accepts exactly the certificate whose fingerprint the join string pins.
#[derive(Debug)]
struct PinnedCert {
    expected: String,
    provider: Arc<CryptoProvider>,
    mismatch: Mismatch,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity);
        if got == self.expected {
            return Ok(ServerCertVerified::assertion());
        }
        let msg = format!(
            "server certificate fingerprint mismatch: the join string pins {}, the server presented {got}",
            self.expected
        );
        *self.mismatch.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
        Err(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
