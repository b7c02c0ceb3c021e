//! The QUIC transport between coordinator and nodes.
//!
//! One [`Server`] listens; nodes [`connect`] with a join string that pins the
//! server's certificate, then present a join token. Every message is one
//! wire frame on its own unidirectional stream, so a large update never holds
//! up a heartbeat; receivers check the header (and the size limit) before
//! reading the payload, and verify the payload before delivering it.

mod endpoint;
mod hello;
mod link;
mod rejections;
pub mod tls;

use std::time::Duration;

use quinn::{ConnectionError, VarInt};

use crate::error::Error;

pub use endpoint::{connect, JoinString, Server};
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
}

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
        Ok(())
    }

    fn transport(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        // Within the QUIC limit of 2^62 ms; validated above.
        t.max_idle_timeout(quinn::IdleTimeout::try_from(self.idle_timeout).ok());
        t.keep_alive_interval(Some(self.idle_timeout / 3));
        t.max_concurrent_uni_streams(VarInt::from_u32(256));
        t.max_concurrent_bidi_streams(VarInt::from_u32(4));
        // Windows that fill 1 Gbit/s at 100 ms RTT. What a peer may park
        // here unread is bounded by the connection window; complete frames
        // wait in the link's receive budget.
        t.stream_receive_window(VarInt::from_u32(8 << 20));
        t.receive_window(VarInt::from_u32(16 << 20));
        t.send_window(32 << 20);
        t.datagram_receive_buffer_size(Some(64 * 1024));
        t.enable_segmentation_offload(self.segmentation_offload);
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
mod tests {
    use super::*;
    use crate::shaping::{DirectionShape, LinkShape};
    use crate::wire::{encode_frame, CodecId, Header, MessageKind};

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
        let server = Server::listen(
            "127.0.0.1",
            0,
            "tok",
            cfg.clone(),
            "coord",
            LinkShape::default(),
            None,
        )
        .await
        .unwrap();
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
}
