//! The QUIC transport between coordinator and nodes.
//!
//! One [`Server`] listens; nodes [`connect`] with a join string that pins the
//! server's certificate, then present a join token. Every message is one
//! wire frame on its own unidirectional stream, so a large update never holds
//! up a heartbeat; receivers check the header (and the size limit) before
//! reading the payload, and verify the payload before delivering it.

mod admission;
mod endpoint;
mod hello;
mod link;
pub mod probe;
mod rejections;
pub mod tls;

use std::time::Duration;

use quinn::{ConnectionError, VarInt};

use crate::error::Error;

pub use endpoint::{connect, AdmissionStats, JoinString, Server};
pub use link::{Link, LinkStats};
pub use rejections::Rejection;
pub use tls::Identity;

/// Settings shared by both ends. [`Default`] is the one place their
/// defaults are written (Python's `TransportConfig` takes them from here).
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Largest payload accepted; larger messages are refused unread.
    pub max_message_bytes: u64,
    /// A peer silent this long is dead; its link fails with a timeout.
    pub idle_timeout: Duration,
    /// Bound on the TLS handshake plus the join-token exchange.
    pub handshake_timeout: Duration,
    /// How often each side sends an RTT probe.
    pub ping_interval: Duration,
    /// Complete frames held for `recv` before readers stop reading (backpressure).
    pub recv_queue: usize,
    /// Let the kernel split batches of datagrams (UDP GSO). Off makes each
    /// datagram its own packet everywhere, as kernel-level shapers need.
    pub segmentation_offload: bool,
    /// Where large received frames are assembled (e.g. straight into the
    /// caller's own object); `None` uses a `Vec`.
    pub frame_alloc: Option<FrameAllocator>,
    /// Server: with a hello deadline, a joined peer may send one message (its
    /// hello, at most [`PRE_AUTH_FRAME`] bytes) and nothing else until
    /// [`Link::authorize`], which must come within this long of the TLS
    /// handshake, else the link is closed and counted. `None`: links are open
    /// as soon as the join token is checked.
    pub hello_timeout: Option<Duration>,
    /// Server: the admission limits on joins in flight.
    pub admission: AdmissionLimits,
    /// How this end paces what it sends (each end governs its own sends).
    pub congestion: Congestion,
}

/// The sender's congestion controller (quinn's own implementations).
///
/// BBR is the default because the links this transport is for lose packets
/// that are not congestion: over a kernel-shaped 20 Mbit/s link with 2 %
/// random loss and 100 ms RTT, 10 MB took 4.6 s with BBR and 80-88 s with
/// Cubic, which reads every loss as a full queue; without loss both filled
/// the link (25 MB in 10.7-11.1 s). quinn marks its BBR experimental, so
/// Cubic stays one setting away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Congestion {
    /// Loss-based; shrinks its window on every loss episode (quinn's default).
    Cubic,
    /// Loss-based, the older and gentler growth curve.
    NewReno,
    /// Model-based (bottleneck bandwidth and minimum RTT): loss that is not
    /// congestion does not lower its rate.
    #[default]
    Bbr,
}

impl Congestion {
    pub const ALL: [Congestion; 3] = [Congestion::Cubic, Congestion::NewReno, Congestion::Bbr];

    pub fn name(self) -> &'static str {
        match self {
            Congestion::Cubic => "cubic",
            Congestion::NewReno => "new_reno",
            Congestion::Bbr => "bbr",
        }
    }

    pub fn parse(name: &str) -> crate::error::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|c| c.name()).collect();
                Error::InvalidArgument(format!(
                    "congestion must be one of {}, got {name:?}",
                    known.join(", ")
                ))
            })
    }

    fn factory(self) -> std::sync::Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> {
        use quinn::congestion::{BbrConfig, CubicConfig, NewRenoConfig};
        match self {
            Congestion::Cubic => std::sync::Arc::new(CubicConfig::default()),
            Congestion::NewReno => std::sync::Arc::new(NewRenoConfig::default()),
            Congestion::Bbr => std::sync::Arc::new(BbrConfig::default()),
        }
    }
}

/// Server: how many peers may be between their first packet and an accepted
/// hello (the join token checked, without a hello deadline) at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// All peers together; more are refused.
    pub max_pending: usize,
    /// From one IP address; more from it are refused.
    pub max_pending_per_address: usize,
    /// In-flight joins above which a new peer must first prove it receives at
    /// its address (a QUIC retry); 0: every peer.
    pub retry_above: usize,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            max_pending: 256,
            max_pending_per_address: 64,
            retry_above: 16,
        }
    }
}

/// The most an unauthenticated peer's one message (its hello) may be; a
/// larger one closes the link unread.
pub const PRE_AUTH_FRAME: u64 = 96 << 10;
/// The connection receive window of a peer that is not authorized yet:
/// room for the join exchange and the hello, no more.
pub(crate) const PRE_AUTH_WINDOW: u32 = 2 * PRE_AUTH_FRAME as u32;
/// Once authorized.
pub(crate) const RECEIVE_WINDOW: u32 = 16 << 20;
pub(crate) const UNI_STREAMS: u32 = 256;

/// A received frame's memory, written once as the frame streams in.
pub trait FrameBuf: Send + 'static {
    fn bytes(&self) -> &[u8];
    fn bytes_mut(&mut self) -> &mut [u8];
    /// For the allocator's owner to take its own type back.
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send>;
}

impl FrameBuf for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

/// Makes a zeroed [`FrameBuf`] of the given length, or `None` to fall back to a `Vec`.
pub type AllocFn = dyn Fn(usize) -> Option<Box<dyn FrameBuf>> + Send + Sync;

#[derive(Clone)]
pub struct FrameAllocator(pub std::sync::Arc<AllocFn>);

impl std::fmt::Debug for FrameAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameAllocator")
    }
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_message_bytes: 256 << 20,
            idle_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_millis(500),
            recv_queue: 64,
            segmentation_offload: true,
            frame_alloc: None,
            hello_timeout: None,
            admission: AdmissionLimits::default(),
            congestion: Congestion::default(),
        }
    }
}

impl TransportConfig {
    pub fn validate(&self) -> crate::error::Result<()> {
        if self.max_message_bytes == 0 {
            return Err(Error::InvalidArgument(
                "max_message_bytes must be positive".into(),
            ));
        }
        for (name, d) in [
            ("idle_timeout", self.idle_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("ping_interval", self.ping_interval),
        ] {
            if d.is_zero() || d > Duration::from_secs(3600) {
                return Err(Error::InvalidArgument(format!(
                    "{name} must be in (0, 3600] seconds, got {:?}",
                    d
                )));
            }
        }
        if self.recv_queue == 0 {
            return Err(Error::InvalidArgument("recv_queue must be positive".into()));
        }
        if let Some(d) = self.hello_timeout {
            if d.is_zero() || d > Duration::from_secs(3600) {
                return Err(Error::InvalidArgument(format!(
                    "hello_timeout must be in (0, 3600] seconds, got {d:?}"
                )));
            }
        }
        let a = &self.admission;
        if a.max_pending == 0 || a.max_pending_per_address == 0 {
            return Err(Error::InvalidArgument(
                "max_pending and max_pending_per_address must be positive".into(),
            ));
        }
        Ok(())
    }

    /// QUIC settings; a server starts every connection closed to all but the
    /// join (one bidirectional stream, a small window): the link opens more
    /// once the join token (and, with a hello deadline, the hello) is accepted.
    fn transport(&self, server: bool) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        // Within the QUIC limit of 2^62 ms; validated above.
        t.max_idle_timeout(quinn::IdleTimeout::try_from(self.idle_timeout).ok());
        t.keep_alive_interval(Some(self.idle_timeout / 3));
        if server {
            t.max_concurrent_uni_streams(VarInt::from_u32(0));
            t.max_concurrent_bidi_streams(VarInt::from_u32(1));
            t.receive_window(VarInt::from_u32(PRE_AUTH_WINDOW));
        } else {
            // The coordinator opens no bidirectional stream.
            t.max_concurrent_uni_streams(VarInt::from_u32(UNI_STREAMS));
            t.max_concurrent_bidi_streams(VarInt::from_u32(0));
            t.receive_window(VarInt::from_u32(RECEIVE_WINDOW));
        }
        // Windows that fill 1 Gbit/s at 100 ms RTT. What a peer may park
        // here unread is bounded by the connection window; complete frames
        // wait in the link's receive budget.
        t.stream_receive_window(VarInt::from_u32(8 << 20));
        t.send_window(32 << 20);
        t.datagram_receive_buffer_size(Some(64 * 1024));
        t.enable_segmentation_offload(self.segmentation_offload);
        t.congestion_controller_factory(self.congestion.factory());
        t
    }
}

/// Application close codes.
pub(crate) mod code {
    use quinn::VarInt;
    pub const NORMAL: VarInt = VarInt::from_u32(0);
    pub const AUTH: VarInt = VarInt::from_u32(1);
    pub const MALFORMED: VarInt = VarInt::from_u32(2);
    pub const SHUTDOWN: VarInt = VarInt::from_u32(3);
    /// The peer's hello did not come (or was not accepted) in time.
    pub const HELLO_TIMEOUT: VarInt = VarInt::from_u32(4);
    /// Stream codes.
    pub const TOO_LARGE: VarInt = VarInt::from_u32(10);
    pub const ABANDONED: VarInt = VarInt::from_u32(11);
}

/// The typed error for a connection that has failed.
pub(crate) fn connection_error(e: &ConnectionError) -> Error {
    match e {
        ConnectionError::ApplicationClosed(c) => {
            let reason = String::from_utf8_lossy(&c.reason).into_owned();
            if c.error_code == code::AUTH {
                Error::Auth(format!("the coordinator refused this node: {reason}"))
            } else {
                Error::Closed(format!("peer closed the connection: {reason}"))
            }
        }
        ConnectionError::TimedOut => {
            Error::Timeout("peer did not answer within the idle timeout".into())
        }
        ConnectionError::LocallyClosed => Error::Closed("connection closed locally".into()),
        ConnectionError::Reset => Error::Closed("connection reset by peer".into()),
        ConnectionError::ConnectionClosed(c) => {
            Error::Transport(format!("peer closed the connection: {c}"))
        }
        other => Error::Transport(other.to_string()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::shaping::{DirectionShape, LinkShape};
    use crate::wire::{encode_frame, CodecId, Header, MessageKind};

    /// A server on a free loopback port, join token "tok", name "coord", unshaped.
    pub(crate) async fn test_server(cfg: TransportConfig) -> Server {
        Server::listen(
            "127.0.0.1",
            0,
            "tok",
            cfg,
            "coord",
            LinkShape::default(),
            None,
        )
        .await
        .unwrap()
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let h = Header::for_payload(
            MessageKind::Update,
            CodecId::Raw,
            0,
            1,
            2,
            Vec::new(),
            payload,
        );
        encode_frame(&h, payload).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn join_send_and_refuse() {
        let cfg = TransportConfig {
            max_message_bytes: 1 << 16,
            ..TransportConfig::default()
        };
        let server = test_server(cfg.clone()).await;
        let lossy = LinkShape::symmetric(
            DirectionShape {
                loss: 0.1,
                ..DirectionShape::default()
            },
            4,
        );
        let node = connect(&server.join_string(), "tok", "n1", lossy, cfg.clone())
            .await
            .unwrap();
        let peer = server.accept(Some(Duration::from_secs(5))).await.unwrap();
        assert_eq!(peer.peer_name(), "n1");
        let f = frame(&[7u8; 50_000]);
        node.send(&f, Some(Duration::from_secs(10)), true)
            .await
            .unwrap();
        let got = peer.recv(Some(Duration::from_secs(10))).await.unwrap();
        assert_eq!(got.bytes(), &f[..]);
        assert!(matches!(
            node.send(&frame(&[0u8; 1 << 17]), None, false).await,
            Err(Error::TooLarge { .. })
        ));

        let bad_token = connect(
            &server.join_string(),
            "nope",
            "n2",
            LinkShape::default(),
            cfg.clone(),
        )
        .await
        .err();
        assert!(
            matches!(&bad_token, Some(Error::Auth(m)) if m.contains("invalid join token")),
            "{bad_token:?}"
        );
        let other = "0".repeat(64);
        let join = format!("quic://{}#{other}", server.local_addr());
        let bad_pin = connect(&join, "tok", "n3", LinkShape::default(), cfg)
            .await
            .err();
        assert!(
            matches!(&bad_pin, Some(Error::Auth(m)) if m.contains("fingerprint mismatch")),
            "{bad_pin:?}"
        );
        server.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gated_link_takes_only_the_hello_until_authorized() {
        let cfg = TransportConfig {
            hello_timeout: Some(Duration::from_secs(2)),
            admission: AdmissionLimits {
                retry_above: 0, // every peer proves its address first
                ..AdmissionLimits::default()
            },
            ..TransportConfig::default()
        };
        let server = test_server(cfg.clone()).await;
        let node = connect(
            &server.join_string(),
            "tok",
            "n1",
            LinkShape::default(),
            TransportConfig::default(),
        )
        .await
        .unwrap();
        let peer = server.accept(Some(Duration::from_secs(5))).await.unwrap();
        assert_eq!(peer.challenge(), node.challenge());
        assert!(!peer.is_authorized() && node.is_authorized());
        let node = std::sync::Arc::new(node);
        let sender = node.clone();
        // The hello, then a large update that must wait for authorization.
        let sends = tokio::spawn(async move {
            sender.send(&frame(b"hello"), None, false).await.unwrap();
            sender
                .send(&frame(&[1u8; 1 << 20]), None, false)
                .await
                .unwrap();
        });
        let hello = peer.recv(Some(Duration::from_secs(5))).await.unwrap();
        assert_eq!(hello.bytes(), &frame(b"hello")[..]);
        assert!(matches!(
            peer.recv(Some(Duration::from_millis(300))).await,
            Err(Error::Timeout(_))
        ));
        assert_eq!(server.admission().pending, 1);
        peer.authorize();
        let update = peer.recv(Some(Duration::from_secs(5))).await.unwrap();
        assert_eq!(update.bytes().len(), frame(&[1u8; 1 << 20]).len());
        sends.await.unwrap();
        // Authorized before the deadline: the link outlives it, and its place is free.
        tokio::time::sleep(Duration::from_millis(2200)).await;
        assert!(!peer.is_closed());
        let stats = server.admission();
        assert_eq!((stats.pending, stats.hello_timeouts), (0, 0), "{stats:?}");
        assert!(stats.retries >= 1, "{stats:?}");
        // A refusal reaches the node as an authentication error.
        peer.refuse("name taken").await;
        let got = node.recv(Some(Duration::from_secs(5))).await.err();
        assert!(
            matches!(&got, Some(Error::Auth(m)) if m.contains("name taken")),
            "{got:?}"
        );
        server.close().await;
    }
}
