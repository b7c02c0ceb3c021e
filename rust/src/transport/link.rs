//! One authenticated connection: frames out on fresh streams, verified
//! frames in through a bounded queue, RTT probes, and link metrics.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::{Connection, Endpoint, ReadError, RecvStream, SendStream, VarInt, WriteError};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};

use super::hello::CHALLENGE_LEN;
use super::rejections::Rejections;
use super::{
    code, connection_error, FrameAllocator, FrameBuf, TransportConfig, PRE_AUTH_FRAME,
    RECEIVE_WINDOW, UNI_STREAMS,
};
use crate::error::{Error, Result};
use crate::shaping::{LinkCounters, LinkShape, ShapedSocket};
use crate::wire::{self, Header, FIXED_LEN};

const RTT_SAMPLES: usize = 64;
/// Frames from this size up go into buffers from the link's allocator.
const LARGE_FRAME: usize = 1 << 20;
const PING: u8 = 1;
const PONG: u8 = 2;

#[derive(Default)]
struct Counters {
    app_bytes_sent: AtomicU64,
    app_bytes_received: AtomicU64,
    messages_sent: AtomicU64,
    messages_received: AtomicU64,
    refused_too_large: AtomicU64,
    refused_by_peer: AtomicU64,
}

struct State {
    started: Instant,
    counters: Counters,
    rtt_samples: Mutex<VecDeque<f64>>,
    /// Why this side closed the connection, when it did so over bad input.
    fatal: Mutex<Option<Error>>,
    rejections: Option<Arc<Rejections>>,
    peer_name: String,
    peer_addr: SocketAddr,
    max_message_bytes: u64,
    alloc: Option<FrameAllocator>,
    /// Streams handed to QUIC and not yet acknowledged.
    inflight: AtomicUsize,
    delivered: Notify,
    close_grace: Duration,
    /// Whether the peer may open streams beyond its hello (see [`Link::authorize`]).
    authorized: watch::Sender<bool>,
    challenge: [u8; CHALLENGE_LEN],
}

/// A snapshot of a link's metrics.
#[derive(Clone, Debug)]
pub struct LinkStats {
    pub age_s: f64,
    pub srtt_ms: f64,
    /// Recent round trips of this link's probes, oldest first.
    pub rtt_samples_ms: Vec<f64>,
    pub app_bytes_sent: u64,
    pub app_bytes_received: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub refused_too_large: u64,
    /// Messages the peer refused as too large after `send` had returned.
    /// Best effort: a refusal that comes once QUIC has acknowledged every
    /// byte is not seen (the sender-side check against the limit the peer
    /// announced at join is what keeps honest peers from getting here).
    pub refused_by_peer: u64,
    /// Streams sent and not yet acknowledged by the peer.
    pub unacked_messages: u64,
    pub udp_bytes_sent: u64,
    pub udp_bytes_received: u64,
    pub udp_datagrams_sent: u64,
    pub udp_datagrams_received: u64,
    pub sent_packets: u64,
    pub lost_packets: u64,
    pub lost_bytes: u64,
    pub congestion_events: u64,
    pub cwnd: u64,
    pub mtu: u16,
    pub shaper: LinkCounters,
}

/// An authenticated connection to one peer.
pub struct Link {
    conn: Connection,
    socket: Arc<ShapedSocket>,
    frames: tokio::sync::Mutex<mpsc::Receiver<Received>>,
    state: Arc<State>,
    /// What the peer said it accepts.
    peer_max_message_bytes: u64,
    /// A node's link owns its endpoint; the coordinator's share one.
    endpoint: Option<Endpoint>,
}

impl Link {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        conn: Connection,
        socket: Arc<ShapedSocket>,
        endpoint: Option<Endpoint>,
        cfg: &TransportConfig,
        peer_name: String,
        peer_max_message_bytes: u64,
        rejections: Option<Arc<Rejections>>,
        challenge: [u8; CHALLENGE_LEN],
        gated: bool,
    ) -> Link {
        let state = Arc::new(State {
            started: Instant::now(),
            counters: Counters::default(),
            rtt_samples: Mutex::new(VecDeque::with_capacity(RTT_SAMPLES)),
            fatal: Mutex::new(None),
            rejections,
            peer_name,
            peer_addr: conn.remote_address(),
            max_message_bytes: cfg.max_message_bytes,
            alloc: cfg.frame_alloc.clone(),
            inflight: AtomicUsize::new(0),
            delivered: Notify::new(),
            close_grace: cfg.idle_timeout.min(Duration::from_secs(5)),
            authorized: watch::Sender::new(false),
            challenge,
        });
        if !gated {
            open_up(&conn, &state);
        }
        let (tx, rx) = mpsc::channel(cfg.recv_queue);
        let budget = Arc::new(Semaphore::new(budget_units(cfg.max_message_bytes)));
        tokio::spawn(accept_streams(conn.clone(), tx, state.clone(), budget));
        tokio::spawn(probe_rtt(conn.clone(), state.clone(), cfg.ping_interval));
        Link {
            conn,
            socket,
            frames: tokio::sync::Mutex::new(rx),
            state,
            peer_max_message_bytes,
            endpoint,
        }
    }

    pub fn peer_name(&self) -> &str {
        &self.state.peer_name
    }

    /// The join challenge of this connection: the one the coordinator sent
    /// (a node's link) or the one it sent this peer (the coordinator's).
    pub fn challenge(&self) -> [u8; CHALLENGE_LEN] {
        self.state.challenge
    }

    /// Let the peer open streams freely (full windows, up to
    /// [`UNI_STREAMS`] at once): its hello was accepted. Until then a
    /// coordinator's link with a hello deadline takes one message and
    /// grants no more stream credit. Idempotent.
    pub fn authorize(&self) {
        open_up(&self.conn, &self.state);
    }

    /// Whether [`Link::authorize`] was called (always, for a link without a hello deadline).
    pub fn is_authorized(&self) -> bool {
        *self.state.authorized.borrow()
    }

    pub(crate) fn watch_authorized(&self) -> watch::Receiver<bool> {
        self.state.authorized.subscribe()
    }

    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// The largest payload the peer accepts.
    pub fn peer_max_message_bytes(&self) -> u64 {
        self.peer_max_message_bytes
    }

    /// Check a frame as the peer will, so bad input fails here with a typed
    /// error instead of costing the connection.
    pub fn check_frame(&self, frame: &[u8]) -> Result<()> {
        wire::decode_frame(frame, self.peer_max_message_bytes).map(|_| ())
    }

    /// Send one frame on its own stream. Waits while flow control says the
    /// peer is behind; returns once QUIC holds every byte (it retransmits
    /// them until acknowledged, and [`Link::close`] waits for that), or, with
    /// `acked`, once the peer has acknowledged them all (so a refusal by the
    /// peer surfaces here). The frame is not checked (see [`Link::check_frame`]).
    pub async fn send_unchecked(
        &self,
        frame: &[u8],
        timeout: Option<Duration>,
        acked: bool,
    ) -> Result<()> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let timed_out = || {
            Error::Timeout(format!(
                "sending a {}-byte frame to {} did not complete in {:?}",
                frame.len(),
                self.state.peer_name,
                timeout.unwrap_or_default()
            ))
        };
        let mut stream = match until(deadline, self.conn.open_uni()).await {
            Some(s) => s.map_err(|e| self.error_from(&e))?,
            None => return Err(timed_out()),
        };
        let written = until(deadline, async {
            stream.write_all(frame).await?;
            stream.finish().map_err(|_| WriteError::ClosedStream)
        })
        .await;
        match written {
            None => {
                // Tell the peer to drop the partial message.
                let _ = stream.reset(code::ABANDONED);
                return Err(timed_out());
            }
            Some(Err(e)) => return Err(self.write_error(e, frame)),
            Some(Ok(())) => {}
        }
        let c = &self.state.counters;
        c.app_bytes_sent
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        c.messages_sent.fetch_add(1, Ordering::Relaxed);
        if !acked {
            self.state.inflight.fetch_add(1, Ordering::AcqRel);
            tokio::spawn(await_delivery(stream, self.state.clone()));
            return Ok(());
        }
        match until(deadline, stream.stopped()).await {
            None => {
                let _ = stream.reset(code::ABANDONED);
                Err(timed_out())
            }
            Some(Ok(None)) => Ok(()),
            Some(Ok(Some(code))) => Err(self.stopped_error(code, frame)),
            Some(Err(quinn::StoppedError::ConnectionLost(e))) => Err(self.error_from(&e)),
            Some(Err(e)) => Err(Error::Transport(e.to_string())),
        }
    }

    fn write_error(&self, e: WriteError, frame: &[u8]) -> Error {
        match e {
            WriteError::Stopped(code) => self.stopped_error(code, frame),
            WriteError::ConnectionLost(e) => self.error_from(&e),
            other => Error::Transport(other.to_string()),
        }
    }

    fn stopped_error(&self, code: quinn::VarInt, frame: &[u8]) -> Error {
        if code == code::TOO_LARGE {
            let size = Header::decode(frame)
                .map(|(h, _)| h.payload_len)
                .unwrap_or(frame.len() as u64);
            Error::TooLarge {
                size,
                limit: self.peer_max_message_bytes,
            }
        } else {
            Error::Transport(format!("peer refused the message (stream code {code})"))
        }
    }

    /// Check, then send, one frame.
    pub async fn send(&self, frame: &[u8], timeout: Option<Duration>, acked: bool) -> Result<()> {
        self.check_frame(frame)?;
        self.send_unchecked(frame, timeout, acked).await
    }

    /// The next complete, verified frame.
    pub async fn recv(&self, timeout: Option<Duration>) -> Result<Box<dyn FrameBuf>> {
        let mut rx = match timeout {
            Some(t) => tokio::time::timeout(t, self.frames.lock())
                .await
                .map_err(|_| self.recv_timeout(t))?,
            None => self.frames.lock().await,
        };
        let next = match timeout {
            Some(t) => tokio::time::timeout(t, rx.recv())
                .await
                .map_err(|_| self.recv_timeout(t))?,
            None => rx.recv().await,
        };
        match next {
            // Dropping the permit returns the frame's bytes to the budget.
            Some((frame, _permit)) => Ok(frame),
            None => Err(self.closed_error()),
        }
    }

    /// A frame that is already waiting, without blocking.
    pub fn try_recv(&self) -> Option<Box<dyn FrameBuf>> {
        let mut rx = self.frames.try_lock().ok()?;
        rx.try_recv().ok().map(|(frame, _permit)| frame)
    }

    fn recv_timeout(&self, t: Duration) -> Error {
        Error::Timeout(format!(
            "no message from {} within {:?}",
            self.state.peer_name, t
        ))
    }

    /// Why the link is down.
    fn closed_error(&self) -> Error {
        if let Some(e) = lock(&self.state.fatal).clone() {
            return e;
        }
        match self.conn.close_reason() {
            Some(e) => connection_error(&e),
            None => Error::Closed("the link stopped receiving".into()),
        }
    }

    fn error_from(&self, e: &quinn::ConnectionError) -> Error {
        lock(&self.state.fatal)
            .clone()
            .unwrap_or_else(|| connection_error(e))
    }

    pub fn set_shape(&self, shape: LinkShape) -> Result<()> {
        shape.validate()?;
        self.socket.set_shape(Some(self.remote_address()), shape);
        Ok(())
    }

    pub fn shape(&self) -> LinkShape {
        self.socket.shape(self.remote_address())
    }

    pub fn stats(&self) -> LinkStats {
        let q = self.conn.stats();
        let c = &self.state.counters;
        LinkStats {
            age_s: self.state.started.elapsed().as_secs_f64(),
            srtt_ms: self.conn.rtt().as_secs_f64() * 1e3,
            rtt_samples_ms: lock(&self.state.rtt_samples).iter().copied().collect(),
            app_bytes_sent: c.app_bytes_sent.load(Ordering::Relaxed),
            app_bytes_received: c.app_bytes_received.load(Ordering::Relaxed),
            messages_sent: c.messages_sent.load(Ordering::Relaxed),
            messages_received: c.messages_received.load(Ordering::Relaxed),
            refused_too_large: c.refused_too_large.load(Ordering::Relaxed),
            refused_by_peer: c.refused_by_peer.load(Ordering::Relaxed),
            unacked_messages: self.state.inflight.load(Ordering::Relaxed) as u64,
            udp_bytes_sent: q.udp_tx.bytes,
            udp_bytes_received: q.udp_rx.bytes,
            udp_datagrams_sent: q.udp_tx.datagrams,
            udp_datagrams_received: q.udp_rx.datagrams,
            sent_packets: q.path.sent_packets,
            lost_packets: q.path.lost_packets,
            lost_bytes: q.path.lost_bytes,
            congestion_events: q.path.congestion_events,
            cwnd: q.path.cwnd,
            mtu: q.path.current_mtu,
            shaper: self.socket.counters(self.remote_address()),
        }
    }

    /// Close the link, telling the peer why; waits briefly for the close to
    /// leave when this link owns its endpoint.
    pub async fn close(&self, reason: &str) {
        self.close_with(code::NORMAL, reason).await;
    }

    /// Close the link as a refusal of the peer (its side sees an
    /// authentication error, which a node does not retry).
    pub async fn refuse(&self, reason: &str) {
        self.close_with(code::AUTH, reason).await;
    }

    async fn close_with(&self, code: VarInt, reason: &str) {
        // Let what `send` handed to QUIC reach the peer first (bounded).
        let drained = async {
            loop {
                let changed = self.state.delivered.notified();
                if self.state.inflight.load(Ordering::Acquire) == 0 {
                    return;
                }
                changed.await;
            }
        };
        if code == code::NORMAL {
            let _ = tokio::time::timeout(self.state.close_grace, drained).await;
        }
        self.conn.close(code, reason.as_bytes());
        if let Some(ep) = &self.endpoint {
            let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
        }
    }

    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The reader and prober tasks hold the connection; end them too.
        self.conn.close(code::NORMAL, b"dropped");
    }
}

/// `fut`'s output, or `None` if `deadline` passes first.
async fn until<F: std::future::Future>(
    deadline: Option<tokio::time::Instant>,
    fut: F,
) -> Option<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, fut).await.ok(),
        None => Some(fut.await),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Grant the peer full windows and stream credit (once; under the watch's
/// lock, so a concurrent [`accept_streams`] closing the door cannot undo it).
fn open_up(conn: &Connection, state: &State) {
    state.authorized.send_if_modified(|authorized| {
        if *authorized {
            return false;
        }
        *authorized = true;
        conn.set_receive_window(VarInt::from_u32(RECEIVE_WINDOW));
        conn.set_max_concurrent_uni_streams(VarInt::from_u32(UNI_STREAMS));
        true
    });
}

/// Follow a sent stream until the peer has it all (or refused it).
async fn await_delivery(stream: SendStream, state: Arc<State>) {
    if let Ok(Some(code)) = stream.stopped().await {
        if code == code::TOO_LARGE {
            state
                .counters
                .refused_by_peer
                .fetch_add(1, Ordering::Relaxed);
        }
    }
    state.inflight.fetch_sub(1, Ordering::AcqRel);
    state.delivered.notify_waiters();
}

/// A verified frame and its share of the receive budget.
type Received = (Box<dyn FrameBuf>, OwnedSemaphorePermit);

/// Received-but-not-yet-`recv`ed bytes are limited to twice the largest
/// message (at least 16 MiB), counted in KiB so any size fits a semaphore.
fn budget_units(max_message_bytes: u64) -> usize {
    let bytes = max_message_bytes.saturating_mul(2).max(16 << 20);
    usize::try_from(bytes >> 10)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS)
}

fn units_for(len: u64, budget: usize) -> u32 {
    let units = len.div_ceil(1024).max(1);
    u32::try_from(units.min(budget as u64)).unwrap_or(u32::MAX)
}

async fn accept_streams(
    conn: Connection,
    tx: mpsc::Sender<Received>,
    state: Arc<State>,
    budget: Arc<Semaphore>,
) {
    let mut authorized = state.authorized.subscribe();
    if !*authorized.borrow_and_update() {
        // Not authorized: one message (the hello), under the small cap; then
        // no stream credit until the hello is accepted.
        let Ok(stream) = conn.accept_uni().await else {
            return;
        };
        state.authorized.send_if_modified(|authorized| {
            if !*authorized {
                conn.set_max_concurrent_uni_streams(VarInt::from_u32(0));
            }
            false
        });
        read_frame(
            stream,
            conn.clone(),
            tx.clone(),
            state.clone(),
            budget.clone(),
            PRE_AUTH_FRAME,
        )
        .await;
        tokio::select! {
            got = authorized.wait_for(|a| *a) => {
                if got.is_err() {
                    return;
                }
            }
            _ = conn.closed() => return,
        }
    }
    while let Ok(stream) = conn.accept_uni().await {
        tokio::spawn(read_frame(
            stream,
            conn.clone(),
            tx.clone(),
            state.clone(),
            budget.clone(),
            state.max_message_bytes,
        ));
    }
}

/// Why one stream's bytes are not a frame.
enum ReadFail {
    /// The peer broke the protocol: close the connection.
    Malformed(Error),
    /// The stream or connection went away: nothing to deliver.
    Gone,
}

impl From<ReadError> for ReadFail {
    fn from(_: ReadError) -> Self {
        ReadFail::Gone
    }
}

async fn read_frame(
    mut stream: RecvStream,
    conn: Connection,
    tx: mpsc::Sender<Received>,
    state: Arc<State>,
    budget: Arc<Semaphore>,
    limit: u64,
) {
    match read_verified(&mut stream, &state, &budget, limit).await {
        Ok(Some((frame, permit))) => {
            let c = &state.counters;
            c.app_bytes_received
                .fetch_add(frame.bytes().len() as u64, Ordering::Relaxed);
            c.messages_received.fetch_add(1, Ordering::Relaxed);
            // Waits while `recv` is behind: backpressure reaches the sender
            // through flow control of the streams not being read.
            let _ = tx.send((frame, permit)).await;
        }
        Ok(None) => {}
        Err(ReadFail::Gone) => {}
        Err(ReadFail::Malformed(err)) => {
            let reason = format!("malformed frame: {err}");
            if let Some(r) = &state.rejections {
                r.record(conn.remote_address(), Some(&state.peer_name), &reason);
            }
            *lock(&state.fatal) = Some(err);
            conn.close(code::MALFORMED, reason.as_bytes());
        }
    }
}

/// Read one frame: fixed header, whole header (checked), size limit, then the
/// payload once into the frame's own buffer, then the payload checksum.
/// `Ok(None)`: refused as too large (the sender is told by a stream stop).
async fn read_verified(
    stream: &mut RecvStream,
    state: &State,
    budget: &Arc<Semaphore>,
    limit: u64,
) -> std::result::Result<Option<Received>, ReadFail> {
    let mut fixed = [0u8; FIXED_LEN];
    read_exact(stream, &mut fixed).await?;
    let header_len = Header::peek_len(&fixed).map_err(ReadFail::Malformed)?;
    let mut head = vec![0u8; header_len];
    head[..FIXED_LEN].copy_from_slice(&fixed);
    read_exact(stream, &mut head[FIXED_LEN..]).await?;
    let (header, _) = Header::decode(&head).map_err(ReadFail::Malformed)?;
    if limit < state.max_message_bytes && header.payload_len > limit {
        // An unauthenticated peer's hello: too large is the end of it.
        return Err(ReadFail::Malformed(Error::TooLarge {
            size: header.payload_len,
            limit,
        }));
    }
    if header.payload_len > state.max_message_bytes {
        // Count (and log) before telling the sender, so its view never runs ahead.
        state
            .counters
            .refused_too_large
            .fetch_add(1, Ordering::Relaxed);
        if let Some(r) = &state.rejections {
            let err = Error::TooLarge {
                size: header.payload_len,
                limit: state.max_message_bytes,
            };
            r.record(
                state.peer_addr,
                Some(&state.peer_name),
                &format!("refused message: {err}"),
            );
        }
        let _ = stream.stop(code::TOO_LARGE);
        return Ok(None);
    }
    let payload_len = header.payload_len as usize;
    let total = header_len + payload_len;
    // Wait for room before reading on: while we wait, flow control holds
    // the sender back, so memory stays bounded however many streams arrive.
    let units = units_for(total as u64, budget_units(state.max_message_bytes));
    let Ok(permit) = budget.clone().acquire_many_owned(units).await else {
        return Err(ReadFail::Gone);
    };
    // The frame's one buffer: the header, then the payload as it streams in.
    let Some(mut frame) = allocate(&state.alloc, total).await else {
        let _ = stream.stop(code::TOO_LARGE);
        return Err(ReadFail::Gone);
    };
    let buf = frame.bytes_mut();
    buf[..header_len].copy_from_slice(&head);
    let mut filled = header_len;
    while filled < total {
        match stream.read_chunk(total - filled, true).await? {
            Some(chunk) => {
                buf[filled..filled + chunk.bytes.len()].copy_from_slice(&chunk.bytes);
                filled += chunk.bytes.len();
            }
            None => {
                return Err(ReadFail::Malformed(Error::Truncated {
                    needed: total,
                    available: filled,
                }))
            }
        }
    }
    if stream.read_chunk(1, true).await?.is_some() {
        return Err(ReadFail::Malformed(Error::Frame(
            "bytes after the payload on the message's stream".into(),
        )));
    }
    header
        .verify_payload(&frame.bytes()[header_len..])
        .map_err(ReadFail::Malformed)?;
    Ok(Some((frame, permit)))
}

/// A buffer of `len` bytes from the link's allocator (large frames only, off
/// the async workers since it may wait for the caller's runtime), else a Vec.
async fn allocate(alloc: &Option<FrameAllocator>, len: usize) -> Option<Box<dyn FrameBuf>> {
    if let Some(alloc) = alloc.as_ref().filter(|_| len >= LARGE_FRAME) {
        let alloc = alloc.clone();
        if let Ok(Some(buf)) = tokio::task::spawn_blocking(move || (alloc.0)(len)).await {
            return Some(buf);
        }
    }
    let mut v = Vec::new();
    // A failed allocation refuses this frame instead of aborting the process.
    v.try_reserve_exact(len).ok()?;
    v.resize(len, 0);
    Some(Box::new(v))
}

async fn read_exact(stream: &mut RecvStream, buf: &mut [u8]) -> std::result::Result<(), ReadFail> {
    match stream.read_exact(buf).await {
        Ok(()) => Ok(()),
        Err(quinn::ReadExactError::FinishedEarly(got)) => {
            Err(ReadFail::Malformed(Error::Truncated {
                needed: buf.len(),
                available: got,
            }))
        }
        Err(quinn::ReadExactError::ReadError(e)) => Err(e.into()),
    }
}

/// Probe the round trip with small datagrams and answer the peer's probes.
async fn probe_rtt(conn: Connection, state: Arc<State>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let mut ping = vec![PING];
                let now = state.started.elapsed().as_nanos() as u64;
                ping.extend_from_slice(&now.to_le_bytes());
                if let Err(quinn::SendDatagramError::ConnectionLost(_)) = conn.send_datagram(ping.into()) {
                    return;
                }
            }
            got = conn.read_datagram() => {
                let Ok(d) = got else { return };
                if d.len() != 9 {
                    continue;
                }
                match d[0] {
                    PING => {
                        let mut pong = d.to_vec();
                        pong[0] = PONG;
                        let _ = conn.send_datagram(pong.into());
                    }
                    PONG => {
                        let sent = u64::from_le_bytes(d[1..9].try_into().unwrap_or_default());
                        let now = state.started.elapsed().as_nanos() as u64;
                        if now >= sent {
                            let mut s = lock(&state.rtt_samples);
                            if s.len() == RTT_SAMPLES {
                                s.pop_front();
                            }
                            s.push_back((now - sent) as f64 / 1e6);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
