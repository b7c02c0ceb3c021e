//! Both ends of a link: the coordinator's listening [`Server`] and the
//! node's [`connect`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Endpoint, EndpointConfig, Incoming, TokioRuntime, VarInt};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

pub use super::admission::AdmissionStats;
use super::admission::{Admission, Decision, Slot};
use super::hello::{Hello, Welcome, CHALLENGE_LEN, MAX_HELLO};
use super::link::Link;
use super::rejections::{Rejection, Rejections};
use super::tls::{self, Identity};
use super::{code, connection_error, TransportConfig};
use crate::error::{Error, Result};
use crate::shaping::{LinkShape, ShapedSocket};

/// `quic://host:port#<sha256 hex of the certificate DER>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinString {
    pub host: String,
    pub port: u16,
    pub fingerprint: String,
}

impl JoinString {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "join string {s:?} {why}; expected quic://HOST:PORT#<64 hex digits>"
            ))
        };
        let rest = s
            .strip_prefix("quic://")
            .ok_or_else(|| bad("does not start with quic://"))?;
        let (addr, fp) = rest
            .split_once('#')
            .ok_or_else(|| bad("has no #fingerprint"))?;
        if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("has a fingerprint that is not 64 hex digits"));
        }
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("has no :port"))?;
        let port = port.parse().map_err(|_| bad("has an invalid port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        Ok(JoinString {
            host: host.to_string(),
            port,
            fingerprint: fp.to_ascii_lowercase(),
        })
    }

    pub fn format(addr: SocketAddr, fingerprint: &str) -> String {
        format!("quic://{addr}#{fingerprint}")
    }
}

/// Socket buffers big enough for a burst at full speed; the kernel caps
/// them at its `rmem_max`/`wmem_max`.
const SOCKET_BUFFER: usize = 4 << 20;

fn bind_socket(addr: SocketAddr, shape: LinkShape) -> Result<Arc<ShapedSocket>> {
    let bind_err = |e: std::io::Error| Error::Transport(format!("cannot bind UDP {addr}: {e}"));
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(bind_err)?;
    // Best effort: a smaller buffer only costs speed.
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    sock.bind(&addr.into()).map_err(bind_err)?;
    let std_sock: std::net::UdpSocket = sock.into();
    let inner = quinn::Runtime::wrap_udp_socket(&TokioRuntime, std_sock)
        .map_err(|e| Error::Transport(format!("cannot use UDP socket {addr}: {e}")))?;
    ShapedSocket::new(inner, shape)
        .map_err(|e| Error::Transport(format!("cannot start the shaping clock: {e}")))
}

/// The coordinator's endpoint.
pub struct Server {
    endpoint: Endpoint,
    socket: Arc<ShapedSocket>,
    local: SocketAddr,
    fingerprint: String,
    accepted: tokio::sync::Mutex<mpsc::Receiver<Link>>,
    rejections: Arc<Rejections>,
    admission: Arc<Admission>,
}

impl Server {
    /// Listen on `host:port` (port 0 picks one). `shape` shapes every peer
    /// until a link is given its own shape.
    pub async fn listen(
        host: &str,
        port: u16,
        token: &str,
        cfg: TransportConfig,
        name: &str,
        shape: LinkShape,
        identity: Option<Identity>,
    ) -> Result<Server> {
        cfg.validate()?;
        shape.validate()?;
        if token.is_empty() {
            return Err(Error::InvalidArgument(
                "token must not be empty".to_string(),
            ));
        }
        let addr = resolve(host, port).await?;
        let identity = match identity {
            Some(kept) => kept,
            None => Identity::self_signed()?,
        };
        let mut server_cfg = quinn::ServerConfig::with_crypto(tls::server_crypto(&identity)?);
        server_cfg.transport_config(Arc::new(cfg.transport(true)));
        let socket = bind_socket(addr, shape)?;
        let endpoint = Endpoint::new_with_abstract_socket(
            EndpointConfig::default(),
            Some(server_cfg),
            socket.clone(),
            Arc::new(TokioRuntime),
        )
        .map_err(|e| Error::Transport(format!("cannot start endpoint on {addr}: {e}")))?;
        let local = endpoint
            .local_addr()
            .map_err(|e| Error::Transport(e.to_string()))?;
        let rejections = Arc::new(Rejections::new());
        let admission = Admission::new(cfg.admission);
        let (tx, rx) = mpsc::channel(256);
        let gate = Arc::new(Gate {
            token_digest: Sha256::digest(token.as_bytes()).into(),
            cfg,
            name: name.to_string(),
            socket: socket.clone(),
            rejections: rejections.clone(),
            admission: admission.clone(),
        });
        tokio::spawn(accept_loop(endpoint.clone(), gate, tx));
        Ok(Server {
            endpoint,
            socket,
            local,
            fingerprint: identity.fingerprint,
            accepted: tokio::sync::Mutex::new(rx),
            rejections,
            admission,
        })
    }

    /// Joins in flight and what admission turned away so far.
    pub fn admission(&self) -> AdmissionStats {
        self.admission.stats()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn join_string(&self) -> String {
        JoinString::format(self.local, &self.fingerprint)
    }

    /// The next authenticated peer.
    pub async fn accept(&self, timeout: Option<Duration>) -> Result<Link> {
        let wait = async { self.accepted.lock().await.recv().await };
        let got = match timeout {
            Some(t) => tokio::time::timeout(t, wait)
                .await
                .map_err(|_| Error::Timeout(format!("no node joined within {t:?}")))?,
            None => wait.await,
        };
        got.ok_or_else(|| Error::Closed("server is closed".into()))
    }

    /// Rejections so far (most recent last) and their total count.
    pub fn rejections(&self) -> (Vec<Rejection>, u64) {
        self.rejections.snapshot()
    }

    pub fn set_default_shape(&self, shape: LinkShape) -> Result<()> {
        shape.validate()?;
        self.socket.set_shape(None, shape);
        Ok(())
    }

    pub async fn close(&self) {
        self.endpoint.close(code::SHUTDOWN, b"server closing");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.endpoint.close(code::SHUTDOWN, b"server closing");
    }
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Error::Transport(format!("cannot resolve {host}:{port}: {e}")))?
        .next()
        .ok_or_else(|| Error::Transport(format!("{host}:{port} resolves to no address")))
}

/// What a joining peer must get past.
struct Gate {
    token_digest: [u8; 32],
    cfg: TransportConfig,
    name: String,
    socket: Arc<ShapedSocket>,
    rejections: Arc<Rejections>,
    admission: Arc<Admission>,
}

async fn accept_loop(endpoint: Endpoint, gate: Arc<Gate>, tx: mpsc::Sender<Link>) {
    while let Some(incoming) = endpoint.accept().await {
        let peer = incoming.remote_address();
        let validated = incoming.remote_address_validated() || !incoming.may_retry();
        match gate.admission.decide(peer.ip(), validated) {
            Decision::Retry => {
                // The peer's next Initial carries the token that proves its address.
                let _ = incoming.retry();
            }
            Decision::Refuse(why) => {
                gate.rejections.record(peer, None, &why);
                incoming.refuse();
            }
            // Each join runs on its own, so a slow or hostile peer holds up no one.
            Decision::Admit(slot) => {
                tokio::spawn(admit(incoming, gate.clone(), tx.clone(), slot));
            }
        }
    }
}

async fn admit(incoming: Incoming, gate: Arc<Gate>, tx: mpsc::Sender<Link>, slot: Slot) {
    let peer = incoming.remote_address();
    let limit = gate.cfg.handshake_timeout;
    let conn = match tokio::time::timeout(limit, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let hint = match &e {
                quinn::ConnectionError::ConnectionClosed(c)
                    if u64::from(c.error_code) & !0xff == 0x100 =>
                {
                    " (the peer refused our certificate: its join string pins another fingerprint?)"
                }
                _ => "",
            };
            gate.rejections
                .record(peer, None, &format!("TLS handshake failed: {e}{hint}"));
            return;
        }
        Err(_) => {
            gate.rejections
                .record(peer, None, &format!("TLS handshake took over {limit:?}"));
            return;
        }
    };
    // From here the join, and with a hello deadline the hello too, must be done in time.
    let gated = gate.cfg.hello_timeout;
    let deadline = tokio::time::Instant::now() + gated.unwrap_or(limit);
    let challenge: [u8; CHALLENGE_LEN] = rand::random();
    let joined = tokio::time::timeout_at(
        deadline,
        check_hello(&conn, &gate, challenge, gated.is_some()),
    )
    .await;
    match joined {
        Ok(Ok(hello)) => {
            let link = Link::start(
                conn.clone(),
                gate.socket.clone(),
                None,
                &gate.cfg,
                hello.name.clone(),
                hello.max_message_bytes,
                Some(gate.rejections.clone()),
                challenge,
                gated.is_some(),
            );
            if let Some(hello_timeout) = gated {
                let watch = link.watch_authorized();
                tokio::spawn(hello_deadline(
                    conn,
                    watch,
                    deadline,
                    hello_timeout,
                    slot,
                    gate.clone(),
                    hello.name,
                ));
            } else {
                drop(slot);
            }
            let _ = tx.send(link).await;
        }
        Ok(Err((name, e))) => {
            let code = if matches!(e, Error::Auth(_)) {
                code::AUTH
            } else {
                code::MALFORMED
            };
            let reason = match &e {
                Error::Auth(why) => why.clone(),
                other => other.to_string(),
            };
            gate.rejections.record(peer, name.as_deref(), &reason);
            conn.close(code, reason.as_bytes());
        }
        Err(_) => {
            let within = gated.unwrap_or(limit);
            let reason = format!("no join message within {within:?}");
            if gated.is_some() {
                gate.admission.hello_timed_out();
            }
            gate.rejections.record(peer, None, &reason);
            conn.close(code::HELLO_TIMEOUT, reason.as_bytes());
        }
    }
}

/// Close a joined peer's link when its hello is not accepted by `deadline`;
/// its place among the joins in flight is held until then.
async fn hello_deadline(
    conn: Connection,
    mut authorized: watch::Receiver<bool>,
    deadline: tokio::time::Instant,
    hello_timeout: Duration,
    slot: Slot,
    gate: Arc<Gate>,
    name: String,
) {
    let check = authorized.clone();
    tokio::select! {
        Ok(_) = authorized.wait_for(|a| *a) => {}
        _ = conn.closed() => {}
        _ = tokio::time::sleep_until(deadline) => {
            if !*check.borrow() {
                let reason = format!("no hello accepted within {hello_timeout:?}");
                gate.admission.hello_timed_out();
                gate.rejections.record(conn.remote_address(), Some(&name), &reason);
                conn.close(code::HELLO_TIMEOUT, reason.as_bytes());
            }
        }
    }
    drop(slot);
}

async fn check_hello(
    conn: &Connection,
    gate: &Gate,
    challenge: [u8; CHALLENGE_LEN],
    gated: bool,
) -> std::result::Result<Hello, (Option<String>, Error)> {
    let fail = |e: Error| (None, e);
    let (mut send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| fail(connection_error(&e)))?;
    let buf = recv
        .read_to_end(MAX_HELLO)
        .await
        .map_err(|e| fail(Error::Frame(format!("join message unreadable: {e}"))))?;
    let hello = Hello::decode(&buf).map_err(fail)?;
    let digest: [u8; 32] = Sha256::digest(hello.token.as_bytes()).into();
    if digest != gate.token_digest {
        return Err((
            Some(hello.name),
            Error::Auth("invalid join token".to_string()),
        ));
    }
    let welcome = Welcome {
        max_message_bytes: gate.cfg.max_message_bytes,
        name: gate.name.clone(),
        challenge,
    }
    .encode()
    .map_err(fail)?;
    // The join was the one bidirectional stream; with a hello deadline the
    // peer may now open one stream for its hello (the link opens the rest).
    conn.set_max_concurrent_bi_streams(VarInt::from_u32(0));
    if gated {
        conn.set_max_concurrent_uni_streams(VarInt::from_u32(1));
    }
    send.write_all(&welcome)
        .await
        .map_err(|e| fail(Error::Transport(e.to_string())))?;
    let _ = send.finish();
    Ok(hello)
}

/// Join the coordinator named by `join`, shaping this node's side of the link.
pub async fn connect(
    join: &str,
    token: &str,
    name: &str,
    shape: LinkShape,
    cfg: TransportConfig,
) -> Result<Link> {
    cfg.validate()?;
    shape.validate()?;
    let js = JoinString::parse(join)?;
    let server = resolve(&js.host, js.port).await?;
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = bind_socket(bind, LinkShape::default())?;
    socket.set_shape(Some(server), shape);
    let endpoint = Endpoint::new_with_abstract_socket(
        EndpointConfig::default(),
        None,
        socket.clone(),
        Arc::new(TokioRuntime),
    )
    .map_err(|e| Error::Transport(format!("cannot start endpoint: {e}")))?;
    let (crypto, mismatch) = tls::client_crypto(&js.fingerprint)?;
    let mut client_cfg = quinn::ClientConfig::new(crypto);
    client_cfg.transport_config(Arc::new(cfg.transport(false)));
    let limit = cfg.handshake_timeout;
    let connecting = endpoint
        .connect_with(client_cfg, server, tls::SERVER_NAME)
        .map_err(|e| Error::Transport(format!("cannot connect to {server}: {e}")))?;
    let conn = match tokio::time::timeout(limit, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let pinned = mismatch.lock().unwrap_or_else(|e| e.into_inner()).take();
            return Err(match pinned {
                Some(msg) => Error::Auth(msg),
                None => connection_error(&e),
            });
        }
        Err(_) => {
            return Err(Error::Timeout(format!(
                "no answer from {server} within {limit:?}"
            )))
        }
    };
    let welcome = match tokio::time::timeout(limit, say_hello(&conn, token, name, &cfg)).await {
        Ok(r) => r?,
        Err(_) => {
            conn.close(code::NORMAL, b"join timed out");
            return Err(Error::Timeout(format!(
                "the coordinator did not answer the join within {limit:?}"
            )));
        }
    };
    Ok(Link::start(
        conn,
        socket,
        Some(endpoint),
        &cfg,
        welcome.name,
        welcome.max_message_bytes,
        None,
        welcome.challenge,
        false,
    ))
}

async fn say_hello(
    conn: &Connection,
    token: &str,
    name: &str,
    cfg: &TransportConfig,
) -> Result<Welcome> {
    let hello = Hello {
        token: token.to_string(),
        max_message_bytes: cfg.max_message_bytes,
        name: name.to_string(),
    }
    .encode()?;
    // A refused join ends with the coordinator closing the connection with
    // the reason, but the end of its (empty) answer may arrive first: wait
    // for the close (the caller bounds the wait) and report its reason.
    let refused = || async { connection_error(&conn.closed().await) };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| connection_error(&e))?;
    if send.write_all(&hello).await.is_err() {
        return Err(refused().await);
    }
    let _ = send.finish();
    match recv.read_to_end(MAX_HELLO).await {
        Ok(buf) if !buf.is_empty() => Welcome::decode(&buf),
        Err(quinn::ReadToEndError::TooLong) => Err(Error::Frame(format!(
            "the coordinator's answer to the join is over {MAX_HELLO} bytes"
        ))),
        Ok(_) | Err(quinn::ReadToEndError::Read(_)) => Err(refused().await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_strings() {
        let fp = "ab".repeat(32);
        let js = JoinString::parse(&format!("quic://127.0.0.1:4433#{fp}")).unwrap();
        assert_eq!((js.host.as_str(), js.port), ("127.0.0.1", 4433));
        let js = JoinString::parse(&format!("quic://[::1]:9#{fp}")).unwrap();
        assert_eq!(js.host, "::1");
        for bad in [
            "http://x:1#00",
            "quic://x:1",
            "quic://x#00",
            &format!("quic://x:99999#{fp}"),
            "quic://x:1#zz",
        ] {
            assert!(JoinString::parse(bad).is_err(), "{bad}");
        }
    }
}
