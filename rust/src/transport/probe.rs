//! Hostile peers, for tests and benchmarks of the coordinator's admission:
//! connections that never say hello. Each one completes the TLS handshake
//! (pinning the certificate like a node, which the server cannot tell from
//! not pinning), optionally passes the join with the token, then opens
//! streams and writes into them whatever flow control lets through: a frame
//! header that promises `bytes_per_stream` bytes of payload, then the bytes.
//! It holds on until the server closes the connection or `hold` passes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::{Connection, Endpoint, EndpointConfig, TokioRuntime};

use super::endpoint::JoinString;
use super::hello::{Hello, MAX_HELLO};
use super::{connection_error, tls, TransportConfig};
use crate::error::{Error, Result};
use crate::shaping::{LinkShape, ShapedSocket};
use crate::wire::{CodecId, Header, MessageKind};

/// What one stranger got out of the server.
#[derive(Clone, Debug, Default)]
pub struct StrangerReport {
    /// The TLS handshake completed.
    pub connected: bool,
    /// The join (token) was accepted.
    pub joined: bool,
    /// Payload bytes the server's flow control let this peer send.
    pub bytes_written: u64,
    /// Seconds from the handshake until the server closed the connection
    /// (or `hold` ran out).
    pub held_s: f64,
    /// Why the connection ended (`None`: still open when `hold` ran out).
    pub closed: Option<String>,
}

/// Strangers to the coordinator named by `join`: `count` connections from one
/// endpoint, all at once.
pub async fn strangers(
    join: &str,
    count: usize,
    token: Option<String>,
    streams: usize,
    bytes_per_stream: u64,
    hold: Duration,
) -> Result<Vec<StrangerReport>> {
    let js = JoinString::parse(join)?;
    let server: SocketAddr = tokio::net::lookup_host((js.host.as_str(), js.port))
        .await
        .map_err(|e| Error::Transport(format!("cannot resolve {}: {e}", js.host)))?
        .next()
        .ok_or_else(|| Error::Transport(format!("{} resolves to no address", js.host)))?;
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let std_sock = std::net::UdpSocket::bind(bind)
        .map_err(|e| Error::Transport(format!("cannot bind UDP: {e}")))?;
    let inner = quinn::Runtime::wrap_udp_socket(&TokioRuntime, std_sock)
        .map_err(|e| Error::Transport(e.to_string()))?;
    let socket = ShapedSocket::new(inner, LinkShape::default())
        .map_err(|e| Error::Transport(e.to_string()))?;
    let endpoint = Endpoint::new_with_abstract_socket(
        EndpointConfig::default(),
        None,
        socket,
        Arc::new(TokioRuntime),
    )
    .map_err(|e| Error::Transport(e.to_string()))?;
    let cfg = TransportConfig::default();
    let (crypto, _) = tls::client_crypto(&js.fingerprint)?;
    let mut client_cfg = quinn::ClientConfig::new(crypto);
    client_cfg.transport_config(Arc::new(cfg.transport(false)));
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let endpoint = endpoint.clone();
            let client_cfg = client_cfg.clone();
            let token = token.clone();
            tokio::spawn(async move {
                one(
                    &endpoint,
                    client_cfg,
                    server,
                    token,
                    streams,
                    bytes_per_stream,
                    hold,
                )
                .await
            })
        })
        .collect();
    let mut reports = Vec::with_capacity(count);
    for t in tasks {
        reports.push(t.await.unwrap_or_default());
    }
    endpoint.close(0u32.into(), b"done");
    Ok(reports)
}

async fn one(
    endpoint: &Endpoint,
    client_cfg: quinn::ClientConfig,
    server: SocketAddr,
    token: Option<String>,
    streams: usize,
    bytes_per_stream: u64,
    hold: Duration,
) -> StrangerReport {
    let mut report = StrangerReport::default();
    let started = Instant::now();
    let connecting = match endpoint.connect_with(client_cfg, server, tls::SERVER_NAME) {
        Ok(c) => c,
        Err(e) => {
            report.closed = Some(e.to_string());
            return report;
        }
    };
    let conn = match tokio::time::timeout(hold, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            report.closed = Some(connection_error(&e).to_string());
            return report;
        }
        Err(_) => {
            report.closed = Some("handshake did not complete".into());
            return report;
        }
    };
    report.connected = true;
    let connected = Instant::now();
    let deadline = started + hold;
    if let Some(token) = token {
        report.joined = tokio::time::timeout_at(deadline.into(), join(&conn, &token))
            .await
            .is_ok_and(|ok| ok);
    }
    let written = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..streams)
        .map(|_| {
            let conn = conn.clone();
            let written = written.clone();
            tokio::spawn(async move { stuff(&conn, bytes_per_stream, &written).await })
        })
        .collect();
    let closed = tokio::time::timeout_at(deadline.into(), conn.closed()).await;
    report.held_s = connected.elapsed().as_secs_f64();
    report.closed = closed.ok().map(|e| connection_error(&e).to_string());
    conn.close(0u32.into(), b"stranger leaves");
    for w in writers {
        w.abort();
        let _ = w.await;
    }
    report.bytes_written = written.load(Ordering::Relaxed);
    report
}

/// The join with `token`, as a node makes it; true when it was accepted.
async fn join(conn: &Connection, token: &str) -> bool {
    let Ok(hello) = (Hello {
        token: token.to_string(),
        max_message_bytes: 1 << 20,
        name: "stranger".into(),
    })
    .encode() else {
        return false;
    };
    let Ok((mut send, mut recv)) = conn.open_bi().await else {
        return false;
    };
    if send.write_all(&hello).await.is_err() {
        return false;
    }
    let _ = send.finish();
    matches!(recv.read_to_end(MAX_HELLO).await, Ok(buf) if !buf.is_empty())
}

/// Open a stream and write a frame header promising `bytes` of payload,
/// then the payload, as far as flow control allows (counted in `written`),
/// and never finish it: the server holds what it took until it gives up.
async fn stuff(conn: &Connection, bytes: u64, written: &AtomicU64) {
    let header = Header {
        payload_len: bytes,
        ..Header::for_payload(MessageKind::Hello, CodecId::Raw, 0, 0, 0, Vec::new(), &[])
    };
    let Ok(head) = header.encode() else { return };
    let Ok(mut stream) = conn.open_uni().await else {
        return;
    };
    if stream.write_all(&head).await.is_ok() {
        let chunk = vec![0u8; 64 << 10];
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(chunk.len() as u64) as usize;
            match stream.write(&chunk[..n]).await {
                Ok(k) => {
                    sent += k as u64;
                    written.fetch_add(k as u64, Ordering::Relaxed);
                }
                Err(_) => break,
            }
        }
    }
    // Dropping the stream would finish it: hold it until aborted.
    std::future::pending::<()>().await;
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tests::test_server;
    use crate::transport::AdmissionLimits;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn strangers_are_held_small_and_closed_at_the_hello_deadline() {
        let cfg = TransportConfig {
            hello_timeout: Some(Duration::from_millis(600)),
            admission: AdmissionLimits {
                max_pending: 6,
                max_pending_per_address: 4,
                retry_above: 2,
            },
            ..TransportConfig::default()
        };
        let server = test_server(cfg).await;
        let join = server.join_string();
        let started = Instant::now();
        let joined = strangers(
            &join,
            3,
            Some("tok".into()),
            4,
            64 << 10,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        for r in &joined {
            assert!(r.connected && r.joined, "{r:?}");
            // One stream (the hello's), never finished: held to the deadline.
            assert!(r.bytes_written <= 64 << 10, "{r:?}");
            assert!(
                r.closed.as_deref().unwrap_or("").contains("no hello"),
                "{r:?}"
            );
            assert!(r.held_s < 3.0, "{r:?}");
        }
        // A hello over the pre-authentication cap ends the link at once.
        let big = strangers(
            &join,
            1,
            Some("tok".into()),
            1,
            16 << 20,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(
            big[0].bytes_written <= 2 * super::super::PRE_AUTH_FRAME,
            "{big:?}"
        );
        assert!(
            big[0].closed.as_deref().unwrap_or("").contains("exceeds"),
            "{big:?}"
        );
        assert!(big[0].held_s < 0.5, "{big:?}");
        // Without the token: never past the join, never a stream.
        let tokenless = strangers(&join, 2, None, 2, 1 << 20, Duration::from_secs(5))
            .await
            .unwrap();
        for r in &tokenless {
            assert!(r.connected && !r.joined && r.bytes_written == 0, "{r:?}");
            assert!(r.closed.is_some(), "{r:?}");
        }
        // More at once than the caps: some are refused, the rest time out.
        let many = strangers(&join, 12, Some("tok".into()), 0, 0, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(many.iter().any(|r| !r.connected), "{many:?}");
        let stats = server.admission();
        assert_eq!(stats.pending, 0, "{stats:?}");
        assert!(stats.refused_busy > 0 && stats.retries > 0, "{stats:?}");
        assert!(stats.hello_timeouts >= 5, "{stats:?}");
        assert!(started.elapsed() < Duration::from_secs(20));
        server.close().await;
    }
}
