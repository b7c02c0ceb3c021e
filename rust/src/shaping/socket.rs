//! A UDP socket for quinn that shapes every datagram below QUIC, so QUIC's
//! own loss recovery and congestion control see what a real lossy, slow,
//! jittery WAN would show them.
//!
//! Egress: `try_send` asks the link's [`LinkShaper`], then queues survivors
//! on a timer heap that the socket's clock thread sends from. Ingress:
//! `poll_recv` drains the real socket, asks the shaper, and hands datagrams
//! to quinn only once their delivery time has come (the clock thread wakes
//! it then). The clock is an OS thread rather than a tokio timer because
//! tokio's timers tick in whole milliseconds: at tens of Mbit/s that much
//! added delay is a large share of the round trip, and changes how QUIC's
//! congestion control behaves.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use super::config::LinkShape;
use super::shaper::{DirectionStats, LinkShaper, Verdict};

/// A datagram waiting for its delivery time.
struct Queued {
    at: Instant,
    seq: u64,
    peer: SocketAddr,
    ecn: Option<EcnCodepoint>,
    /// Source IP for egress, destination IP for ingress.
    local_ip: Option<IpAddr>,
    data: Vec<u8>,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

type Heap = BinaryHeap<Reverse<Queued>>;

struct Links {
    default: LinkShape,
    peers: HashMap<SocketAddr, LinkShaper>,
}

struct Shared {
    epoch: Instant,
    links: Mutex<Links>,
    /// Cheap check that lets unshaped sockets pass datagrams straight through.
    shaping: AtomicBool,
    clock: Mutex<Clock>,
    tick: Condvar,
    closed: AtomicBool,
}

/// What the clock thread waits for.
#[derive(Default)]
struct Clock {
    egress: Heap,
    seq: u64,
    /// When `poll_recv` next has a datagram due, and whom to wake then.
    ingress: Option<(Instant, Waker)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not stop the socket; the data is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn refresh_shaping(&self, links: &Links) {
        let on =
            !links.default.is_transparent() || links.peers.values().any(|l| !l.is_transparent());
        self.shaping.store(on, Ordering::Release);
    }

    /// The shaper of `peer`, created from the default shape on first use;
    /// `None` while neither shapes anything.
    fn link<'a>(&self, links: &'a mut Links, peer: SocketAddr) -> Option<&'a mut LinkShaper> {
        if !links.peers.contains_key(&peer) {
            if links.default.is_transparent() {
                return None;
            }
            let shaper = LinkShaper::new(links.default.clone(), self.now());
            links.peers.insert(peer, shaper);
        }
        links.peers.get_mut(&peer)
    }
}

struct RecvState {
    scratch: Vec<Vec<u8>>,
    metas: Vec<RecvMeta>,
    heap: Heap,
    seq: u64,
}

const RECV_BATCH: usize = 16;
const MAX_DATAGRAM: usize = 65_536;

/// The shaping socket.
pub struct ShapedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    shared: Arc<Shared>,
    recv: Mutex<RecvState>,
}

impl fmt::Debug for ShapedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShapedSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// Per-direction counters of one link, as seen by its shaped endpoint.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkCounters {
    pub egress: DirectionStats,
    pub ingress: DirectionStats,
}

impl ShapedSocket {
    /// Wrap `inner`; `default` shapes every peer without a shape of its own.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, default: LinkShape) -> io::Result<Arc<Self>> {
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            links: Mutex::new(Links {
                default,
                peers: HashMap::new(),
            }),
            shaping: AtomicBool::new(false),
            clock: Mutex::new(Clock::default()),
            tick: Condvar::new(),
            closed: AtomicBool::new(false),
        });
        shared.refresh_shaping(&lock(&shared.links));
        let (clock_inner, clock_shared) = (inner.clone(), shared.clone());
        std::thread::Builder::new()
            .name("hypergpu-shaper".into())
            .spawn(move || run_clock(clock_inner, clock_shared))?;
        Ok(Arc::new(ShapedSocket {
            inner,
            shared,
            recv: Mutex::new(RecvState {
                scratch: vec![vec![0; MAX_DATAGRAM]; RECV_BATCH],
                metas: vec![RecvMeta::default(); RECV_BATCH],
                heap: Heap::new(),
                seq: 0,
            }),
        }))
    }

    /// Shape the link to `peer` (replacing its shape, clock and schedule), or
    /// with `None` set the default for every peer and reset all links to it.
    pub fn set_shape(&self, peer: Option<SocketAddr>, shape: LinkShape) {
        let now = self.shared.now();
        let mut links = lock(&self.shared.links);
        match peer {
            Some(peer) => match links.peers.get_mut(&peer) {
                Some(link) => link.set_shape(shape, now),
                None => {
                    links.peers.insert(peer, LinkShaper::new(shape, now));
                }
            },
            None => {
                for link in links.peers.values_mut() {
                    link.set_shape(shape.clone(), now);
                }
                links.default = shape;
            }
        }
        self.shared.refresh_shaping(&links);
    }

    /// The shape currently applied to `peer`.
    pub fn shape(&self, peer: SocketAddr) -> LinkShape {
        let links = lock(&self.shared.links);
        match links.peers.get(&peer) {
            Some(l) => l.shape().clone(),
            None => links.default.clone(),
        }
    }

    pub fn counters(&self, peer: SocketAddr) -> LinkCounters {
        let links = lock(&self.shared.links);
        links
            .peers
            .get(&peer)
            .map(|l| LinkCounters {
                egress: l.egress.stats,
                ingress: l.ingress.stats,
            })
            .unwrap_or_default()
    }

    fn queue_egress(&self, t: &Transmit, link: &mut LinkShaper) {
        let now = self.shared.now();
        let seg = t.segment_size.unwrap_or(t.contents.len()).max(1);
        let mut clock = lock(&self.shared.clock);
        for chunk in t.contents.chunks(seg) {
            if let Verdict::DeliverAt(at) = link.decide_egress(now, chunk.len()) {
                clock.seq += 1;
                let seq = clock.seq;
                clock.egress.push(Reverse(Queued {
                    at: self.shared.epoch + at,
                    seq,
                    peer: t.destination,
                    ecn: t.ecn,
                    local_ip: t.src_ip,
                    data: chunk.to_vec(),
                }));
            }
        }
        drop(clock);
        self.shared.tick.notify_one();
    }
}

impl Drop for ShapedSocket {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.tick.notify_one();
    }
}

/// Send queued datagrams and wake the receiver when they are due. Once the
/// socket is dropped it drains what is queued (a CONNECTION_CLOSE, say) and
/// ends.
fn run_clock(inner: Arc<dyn AsyncUdpSocket>, shared: Arc<Shared>) {
    let mut clock = lock(&shared.clock);
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        while clock.egress.peek().is_some_and(|p| p.0.at <= now) {
            if let Some(Reverse(p)) = clock.egress.pop() {
                due.push(p);
            }
        }
        let wake = match &clock.ingress {
            Some((at, _)) if *at <= now => clock.ingress.take().map(|(_, w)| w),
            _ => None,
        };
        if !due.is_empty() || wake.is_some() {
            drop(clock);
            for p in &due {
                send_now(inner.as_ref(), p);
            }
            if let Some(w) = wake {
                w.wake();
            }
            clock = lock(&shared.clock);
            continue;
        }
        if shared.closed.load(Ordering::Acquire) && clock.egress.is_empty() {
            return;
        }
        let next = [
            clock.egress.peek().map(|p| p.0.at),
            clock.ingress.as_ref().map(|(at, _)| *at),
        ]
        .into_iter()
        .flatten()
        .min();
        clock = match next {
            Some(at) => {
                let wait = at.saturating_duration_since(now);
                shared
                    .tick
                    .wait_timeout(clock, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => shared.tick.wait(clock).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

/// Send one datagram now. A full socket buffer is waited out briefly; like
/// a router, anything else loses the datagram, and QUIC recovers.
fn send_now(inner: &dyn AsyncUdpSocket, p: &Queued) {
    let t = Transmit {
        destination: p.peer,
        ecn: p.ecn,
        contents: &p.data,
        segment_size: None,
        src_ip: p.local_ip,
    };
    for _ in 0..200 {
        match inner.try_send(&t) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(50));
            }
            _ => return,
        }
    }
}

impl AsyncUdpSocket for ShapedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if self.shared.shaping.load(Ordering::Acquire) {
            let mut links = lock(&self.shared.links);
            if let Some(link) = self.shared.link(&mut links, transmit.destination) {
                if !link.is_transparent() {
                    self.queue_egress(transmit, link);
                    return Ok(());
                }
            }
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut guard = lock(&self.recv);
        let st = &mut *guard;
        if !self.shared.shaping.load(Ordering::Acquire) && st.heap.is_empty() {
            return self.inner.poll_recv(cx, bufs, meta);
        }
        // Take everything the kernel has, deciding each datagram's fate.
        loop {
            let mut slices: Vec<IoSliceMut<'_>> =
                st.scratch.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            match self.inner.poll_recv(cx, &mut slices, &mut st.metas) {
                Poll::Ready(Ok(n)) => {
                    let now = self.shared.now();
                    let mut links = lock(&self.shared.links);
                    for i in 0..n {
                        let m = st.metas[i];
                        let stride = m.stride.max(1);
                        for chunk in st.scratch[i][..m.len].chunks(stride) {
                            let verdict = match self.shared.link(&mut links, m.addr) {
                                Some(link) => link.decide_ingress(now, chunk.len()),
                                None => Verdict::DeliverAt(now),
                            };
                            if let Verdict::DeliverAt(at) = verdict {
                                st.seq += 1;
                                st.heap.push(Reverse(Queued {
                                    at: self.shared.epoch + at,
                                    seq: st.seq,
                                    peer: m.addr,
                                    ecn: m.ecn,
                                    local_ip: m.dst_ip,
                                    data: chunk.to_vec(),
                                }));
                            }
                        }
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        // Hand over what is due.
        let now = Instant::now();
        let mut n = 0;
        while n < bufs.len().min(meta.len()) && st.heap.peek().is_some_and(|p| p.0.at <= now) {
            let Some(Reverse(p)) = st.heap.pop() else {
                break;
            };
            let len = p.data.len().min(bufs[n].len());
            bufs[n][..len].copy_from_slice(&p.data[..len]);
            meta[n] = RecvMeta {
                addr: p.peer,
                len,
                stride: len,
                ecn: p.ecn,
                dst_ip: p.local_ip,
            };
            n += 1;
        }
        if n > 0 {
            return Poll::Ready(Ok(n));
        }
        // Ask the clock thread to wake us when the next one is due.
        if let Some(next) = st.heap.peek().map(|p| p.0.at) {
            lock(&self.shared.clock).ingress = Some((next, cx.waker().clone()));
            self.shared.tick.notify_one();
        }
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
