//! A UDP socket for quinn that shapes every datagram below QUIC, so QUIC's
//! own loss recovery and congestion control see what a real lossy, slow,
//! jittery WAN would show them.
//!
//! Egress: `try_send` asks the link's [`LinkShaper`], then queues survivors
//! on a timer heap that a background task sends from. Ingress: `poll_recv`
//! drains the real socket, asks the shaper, and hands datagrams to quinn
//! only once their delivery time has come.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::Notify;

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
    egress: Mutex<(Heap, u64)>,
    egress_wake: Notify,
    closed: AtomicBool,
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
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

const RECV_BATCH: usize = 16;
const MAX_DATAGRAM: usize = 65_536;

/// The shaping socket. Create it inside a tokio runtime (it spawns its
/// egress task there).
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
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, default: LinkShape) -> Arc<Self> {
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            links: Mutex::new(Links {
                default,
                peers: HashMap::new(),
            }),
            shaping: AtomicBool::new(false),
            egress: Mutex::new((Heap::new(), 0)),
            egress_wake: Notify::new(),
            closed: AtomicBool::new(false),
        });
        shared.refresh_shaping(&lock(&shared.links));
        tokio::spawn(egress_loop(inner.clone(), shared.clone()));
        Arc::new(ShapedSocket {
            inner,
            shared,
            recv: Mutex::new(RecvState {
                scratch: vec![vec![0; MAX_DATAGRAM]; RECV_BATCH],
                metas: vec![RecvMeta::default(); RECV_BATCH],
                heap: Heap::new(),
                seq: 0,
                timer: None,
            }),
        })
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
        let mut q = lock(&self.shared.egress);
        for chunk in t.contents.chunks(seg) {
            if let Verdict::DeliverAt(at) = link.decide_egress(now, chunk.len()) {
                q.1 += 1;
                let seq = q.1;
                q.0.push(Reverse(Queued {
                    at: self.shared.epoch + at,
                    seq,
                    peer: t.destination,
                    ecn: t.ecn,
                    local_ip: t.src_ip,
                    data: chunk.to_vec(),
                }));
            }
        }
        drop(q);
        self.shared.egress_wake.notify_one();
    }
}

impl Drop for ShapedSocket {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.egress_wake.notify_one();
    }
}

/// Send queued datagrams when they are due. Once the socket is dropped it
/// drains what is queued (a CONNECTION_CLOSE, say) and ends.
async fn egress_loop(inner: Arc<dyn AsyncUdpSocket>, shared: Arc<Shared>) {
    let mut poller = inner.clone().create_io_poller();
    loop {
        let now = Instant::now();
        let (due, next) = {
            let mut q = lock(&shared.egress);
            let mut due = Vec::new();
            while q.0.peek().is_some_and(|p| p.0.at <= now) {
                if let Some(Reverse(p)) = q.0.pop() {
                    due.push(p);
                }
            }
            (due, q.0.peek().map(|p| p.0.at))
        };
        for p in &due {
            let t = Transmit {
                destination: p.peer,
                ecn: p.ecn,
                contents: &p.data,
                segment_size: None,
                src_ip: p.local_ip,
            };
            loop {
                match inner.try_send(&t) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    // Like a router, a send error loses the datagram; QUIC recovers.
                    _ => break,
                }
            }
        }
        if !due.is_empty() {
            continue;
        }
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = shared.egress_wake.notified() => {}
                }
            }
            None if shared.closed.load(Ordering::Acquire) => return,
            None => shared.egress_wake.notified().await,
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
        loop {
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
            let Some(next) = st.heap.peek().map(|p| p.0.at) else {
                return Poll::Pending;
            };
            let deadline = tokio::time::Instant::from_std(next);
            let timer = st
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            timer.as_mut().reset(deadline);
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
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
