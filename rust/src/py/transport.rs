//! Python face of [`crate::transport`] and [`crate::shaping`]: awaitables on
//! the one tokio runtime that `pyo3-async-runtimes` keeps for the process.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use pyo3_async_runtimes::tokio::future_into_py;

use crate::error::{Error, Result};
use crate::shaping::{
    BurstLoss, DirectionShape, DirectionStats, DropCause, JitterDist, LinkShape, LinkShaper,
    Outage, Verdict, PROFILES,
};
use crate::transport::{self, Config, FrameAllocator, FrameBuf, Link, Server};

static RUNTIME_PID: OnceLock<u32> = OnceLock::new();

/// The runtime's threads do not survive `fork`; refuse to use it from a
/// child rather than hang.
fn fork_guard() -> Result<()> {
    let me = std::process::id();
    let owner = *RUNTIME_PID.get_or_init(|| me);
    if owner != me {
        return Err(Error::Transport(format!(
            "the transport runtime was started in process {owner}; this process ({me}) is a fork \
             of it and cannot use it (start transports only after forking, or use the 'spawn' \
             start method)"
        )));
    }
    Ok(())
}

fn seconds(name: &str, v: f64) -> Result<Duration> {
    if !v.is_finite() || v < 0.0 {
        return Err(Error::InvalidArgument(format!(
            "{name} must be a finite number >= 0, got {v}"
        )));
    }
    Duration::try_from_secs_f64(v)
        .map_err(|_| Error::InvalidArgument(format!("{name} is out of range: {v}")))
}

fn positive_seconds(name: &str, v: f64) -> Result<Duration> {
    let d = seconds(name, v)?;
    if d.is_zero() {
        return Err(Error::InvalidArgument(format!(
            "{name} must be positive, got {v}"
        )));
    }
    Ok(d)
}

fn opt_timeout(v: Option<f64>) -> Result<Option<Duration>> {
    v.map(|t| positive_seconds("timeout", t)).transpose()
}

fn burst_from(map: HashMap<String, f64>) -> Result<BurstLoss> {
    const KEYS: [&str; 4] = ["p_enter_bad", "p_exit_bad", "loss_in_good", "loss_in_bad"];
    if let Some(k) = map.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(Error::InvalidArgument(format!(
            "burst_loss has unknown key {k:?}; expected {}",
            KEYS.join(", ")
        )));
    }
    let get = |k: &str| {
        map.get(k)
            .copied()
            .ok_or_else(|| Error::InvalidArgument(format!("burst_loss is missing {k:?}")))
    };
    Ok(BurstLoss {
        p_enter_bad: get("p_enter_bad")?,
        p_exit_bad: get("p_exit_bad")?,
        loss_in_good: get("loss_in_good")?,
        loss_in_bad: get("loss_in_bad")?,
    })
}

fn outages_from(outages: Vec<(f64, f64)>) -> Result<Vec<Outage>> {
    outages
        .into_iter()
        .enumerate()
        .map(|(i, (start, dur))| {
            Ok(Outage {
                start: seconds(&format!("outages[{i}].start_s"), start)?,
                duration: seconds(&format!("outages[{i}].duration_s"), dur)?,
            })
        })
        .collect()
}

fn schedule_from(
    schedule: Vec<(f64, PyRef<'_, PyLinkShape>)>,
) -> Result<Vec<(Duration, LinkShape)>> {
    let mut out = schedule
        .into_iter()
        .enumerate()
        .map(|(i, (at, s))| {
            Ok((
                seconds(&format!("schedule[{i}].at_s"), at)?,
                s.inner.clone(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    out.sort_by_key(|(at, _)| *at);
    Ok(out)
}

/// How a link is shaped: per direction delay, loss, bandwidth and queue;
/// outages; scheduled changes; and the seed that makes it replayable.
#[pyclass(module = "hypergpu._core", name = "LinkShape", frozen, eq)]
#[derive(Clone, PartialEq)]
pub struct PyLinkShape {
    pub inner: LinkShape,
}

#[pymethods]
impl PyLinkShape {
    /// The same shape in both directions.
    #[new]
    #[pyo3(signature = (*, latency_ms=0.0, jitter_ms=0.0, jitter_dist="uniform", loss=0.0,
        burst_loss=None, bandwidth_bps=None, queue_bytes=crate::shaping::config::DEFAULT_QUEUE_BYTES,
        reorder=false, outages=Vec::new(), schedule=Vec::new(), seed=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        latency_ms: f64,
        jitter_ms: f64,
        jitter_dist: &str,
        loss: f64,
        burst_loss: Option<HashMap<String, f64>>,
        bandwidth_bps: Option<u64>,
        queue_bytes: u64,
        reorder: bool,
        outages: Vec<(f64, f64)>,
        schedule: Vec<(f64, PyRef<'_, PyLinkShape>)>,
        seed: u64,
    ) -> Result<Self> {
        let dir = DirectionShape {
            latency: seconds("latency_ms", latency_ms / 1e3)?,
            jitter: seconds("jitter_ms", jitter_ms / 1e3)?,
            jitter_dist: JitterDist::from_name(jitter_dist)?,
            loss,
            burst: burst_loss.map(burst_from).transpose()?,
            bandwidth_bps,
            queue_bytes,
            reorder,
        };
        let mut inner = LinkShape::symmetric(dir, seed);
        inner.outages = outages_from(outages)?;
        inner.schedule = schedule_from(schedule)?;
        inner.validate()?;
        Ok(PyLinkShape { inner })
    }

    /// A named profile: perfect, good, average, poor, unstable.
    #[staticmethod]
    #[pyo3(signature = (name, *, seed=0))]
    fn profile(name: &str, seed: u64) -> Result<Self> {
        Ok(PyLinkShape {
            inner: LinkShape::profile(name, seed)?,
        })
    }

    /// Egress from `egress`'s egress direction, ingress from `ingress`'s.
    #[staticmethod]
    #[pyo3(signature = (egress, ingress, *, seed=0))]
    fn asymmetric(egress: &PyLinkShape, ingress: &PyLinkShape, seed: u64) -> Result<Self> {
        let inner = LinkShape {
            egress: egress.inner.egress.clone(),
            ingress: ingress.inner.ingress.clone(),
            seed,
            ..LinkShape::default()
        };
        inner.validate()?;
        Ok(PyLinkShape { inner })
    }

    /// This shape with the link down in each `(start_s, duration_s)` window,
    /// counted from when the shape is applied.
    fn with_outages(&self, outages: Vec<(f64, f64)>) -> Result<Self> {
        let mut inner = self.inner.clone();
        inner.outages = outages_from(outages)?;
        Ok(PyLinkShape { inner })
    }

    /// This shape, switching to each `(at_s, shape)` at that offset from when
    /// it is applied.
    fn with_schedule(&self, schedule: Vec<(f64, PyRef<'_, PyLinkShape>)>) -> Result<Self> {
        let mut inner = self.inner.clone();
        inner.schedule = schedule_from(schedule)?;
        inner.validate()?;
        Ok(PyLinkShape { inner })
    }

    fn with_seed(&self, seed: u64) -> Self {
        let mut inner = self.inner.clone();
        inner.seed = seed;
        PyLinkShape { inner }
    }

    /// Run this shape's shaper on a virtual clock, with no network: for each
    /// `(arrival_s, size)` datagram (in order), its delivery time in seconds
    /// or the name of the drop cause. Same seed, same answers.
    #[pyo3(signature = (datagrams, direction="egress"))]
    fn simulate<'py>(
        &self,
        py: Python<'py>,
        datagrams: Vec<(f64, usize)>,
        direction: &str,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let egress = match direction {
            "egress" => true,
            "ingress" => false,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "direction must be \"egress\" or \"ingress\", got {other:?}"
                ))
                .into())
            }
        };
        let mut link = LinkShaper::new(self.inner.clone(), Duration::ZERO);
        let mut last = Duration::ZERO;
        let mut out = Vec::with_capacity(datagrams.len());
        for (i, (at, len)) in datagrams.into_iter().enumerate() {
            let now = seconds(&format!("datagrams[{i}].arrival_s"), at)?;
            if now < last {
                return Err(Error::InvalidArgument(format!(
                    "datagrams[{i}] arrives before the one before it"
                ))
                .into());
            }
            last = now;
            let verdict = if egress {
                link.decide_egress(now, len)
            } else {
                link.decide_ingress(now, len)
            };
            out.push(match verdict {
                Verdict::DeliverAt(t) => t.as_secs_f64().into_pyobject(py)?.into_any(),
                Verdict::Drop(cause) => cause.name().into_pyobject(py)?.into_any(),
            });
        }
        Ok(out)
    }

    #[getter]
    fn seed(&self) -> u64 {
        self.inner.seed
    }

    #[getter]
    fn is_transparent(&self) -> bool {
        self.inner.is_transparent()
    }

    /// Everything about this shape as plain Python values.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        shape_dict(py, &self.inner)
    }

    fn __repr__(&self) -> String {
        let d = |s: &DirectionShape| {
            format!(
                "latency_ms={}, jitter_ms={} ({}), loss={}, burst={}, bandwidth_bps={:?}, queue_bytes={}",
                s.latency.as_secs_f64() * 1e3,
                s.jitter.as_secs_f64() * 1e3,
                s.jitter_dist.name(),
                s.loss,
                s.burst.is_some(),
                s.bandwidth_bps,
                s.queue_bytes
            )
        };
        format!(
            "LinkShape(egress=[{}], ingress=[{}], outages={}, schedule={}, seed={})",
            d(&self.inner.egress),
            d(&self.inner.ingress),
            self.inner.outages.len(),
            self.inner.schedule.len(),
            self.inner.seed
        )
    }
}

fn direction_dict<'py>(py: Python<'py>, s: &DirectionShape) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("latency_ms", s.latency.as_secs_f64() * 1e3)?;
    d.set_item("jitter_ms", s.jitter.as_secs_f64() * 1e3)?;
    d.set_item("jitter_dist", s.jitter_dist.name())?;
    d.set_item("loss", s.loss)?;
    match &s.burst {
        Some(b) => {
            let bd = PyDict::new(py);
            bd.set_item("p_enter_bad", b.p_enter_bad)?;
            bd.set_item("p_exit_bad", b.p_exit_bad)?;
            bd.set_item("loss_in_good", b.loss_in_good)?;
            bd.set_item("loss_in_bad", b.loss_in_bad)?;
            d.set_item("burst_loss", bd)?;
        }
        None => d.set_item("burst_loss", py.None())?,
    }
    d.set_item("bandwidth_bps", s.bandwidth_bps)?;
    d.set_item("queue_bytes", s.queue_bytes)?;
    d.set_item("reorder", s.reorder)?;
    Ok(d)
}

fn shape_dict<'py>(py: Python<'py>, s: &LinkShape) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("egress", direction_dict(py, &s.egress)?)?;
    d.set_item("ingress", direction_dict(py, &s.ingress)?)?;
    let outages: Vec<(f64, f64)> = s
        .outages
        .iter()
        .map(|o| (o.start.as_secs_f64(), o.duration.as_secs_f64()))
        .collect();
    d.set_item("outages", outages)?;
    let schedule = s
        .schedule
        .iter()
        .map(|(at, step)| Ok((at.as_secs_f64(), shape_dict(py, step)?)))
        .collect::<PyResult<Vec<_>>>()?;
    d.set_item("schedule", schedule)?;
    d.set_item("seed", s.seed)?;
    Ok(d)
}

fn config(
    max_message_bytes: u64,
    idle_timeout: f64,
    handshake_timeout: f64,
    ping_interval: f64,
    recv_queue: usize,
    segmentation_offload: bool,
) -> Result<Config> {
    let cfg = Config {
        max_message_bytes,
        idle_timeout: positive_seconds("idle_timeout", idle_timeout)?,
        handshake_timeout: positive_seconds("handshake_timeout", handshake_timeout)?,
        ping_interval: positive_seconds("ping_interval", ping_interval)?,
        recv_queue,
        segmentation_offload,
        frame_alloc: Some(FrameAllocator(Arc::new(py_bytes_frame))),
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The coordinator's listening endpoint.
#[pyclass(module = "hypergpu._core", name = "TransportServer", frozen)]
pub struct PyServer {
    inner: Arc<Server>,
}

#[pymethods]
impl PyServer {
    /// Awaitable: listen on `host:port` (0 picks a free port).
    #[staticmethod]
    #[pyo3(signature = (host, port, *, token, max_message_bytes=256 << 20, idle_timeout=10.0,
        handshake_timeout=10.0, ping_interval=0.5, recv_queue=64, name="coordinator".to_string(), shape=None,
        segmentation_offload=true))]
    #[allow(clippy::too_many_arguments)]
    fn listen<'py>(
        py: Python<'py>,
        host: String,
        port: u16,
        token: String,
        max_message_bytes: u64,
        idle_timeout: f64,
        handshake_timeout: f64,
        ping_interval: f64,
        recv_queue: usize,
        name: String,
        shape: Option<PyRef<'_, PyLinkShape>>,
        segmentation_offload: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        fork_guard()?;
        let cfg = config(
            max_message_bytes,
            idle_timeout,
            handshake_timeout,
            ping_interval,
            recv_queue,
            segmentation_offload,
        )?;
        let shape = shape.map(|s| s.inner.clone()).unwrap_or_default();
        future_into_py(py, async move {
            let server = Server::listen(&host, port, &token, cfg, &name, shape).await?;
            Ok(PyServer {
                inner: Arc::new(server),
            })
        })
    }

    #[getter]
    fn join_string(&self) -> String {
        self.inner.join_string()
    }

    #[getter]
    fn fingerprint(&self) -> String {
        self.inner.fingerprint().to_string()
    }

    /// `(host, port)` the server listens on.
    #[getter]
    fn address(&self) -> (String, u16) {
        let a = self.inner.local_addr();
        (a.ip().to_string(), a.port())
    }

    /// Awaitable: the next authenticated peer.
    #[pyo3(signature = (timeout=None))]
    fn accept<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        fork_guard()?;
        let timeout = opt_timeout(timeout)?;
        let server = self.inner.clone();
        future_into_py(py, async move {
            let link = server.accept(timeout).await?;
            Ok(PyConnection {
                inner: Arc::new(link),
            })
        })
    }

    /// Peers turned away or cut off, most recent last (bounded log), each a
    /// dict with `peer`, `name`, `reason`, `at_s`.
    fn rejections<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let (log, _) = self.inner.rejections();
        log.iter()
            .map(|r| {
                let d = PyDict::new(py);
                d.set_item("peer", r.peer.to_string())?;
                d.set_item("name", r.name.clone())?;
                d.set_item("reason", r.reason.clone())?;
                d.set_item("at_s", r.at_s)?;
                Ok(d)
            })
            .collect()
    }

    /// Total rejections since the server started.
    #[getter]
    fn rejection_count(&self) -> u64 {
        self.inner.rejections().1
    }

    /// Shape every peer that has no shape of its own (resets existing links).
    fn set_default_shape(&self, shape: &PyLinkShape) -> Result<()> {
        self.inner.set_default_shape(shape.inner.clone())
    }

    /// Awaitable: close every link and stop listening.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        fork_guard()?;
        let server = self.inner.clone();
        future_into_py(py, async move {
            server.close().await;
            Ok(())
        })
    }
}

/// Awaitable: join the coordinator named by `join`.
#[pyfunction]
#[pyo3(signature = (join, *, token, name, shape=None, max_message_bytes=256 << 20,
    idle_timeout=10.0, handshake_timeout=10.0, ping_interval=0.5, recv_queue=64, segmentation_offload=true))]
#[allow(clippy::too_many_arguments)]
fn transport_connect<'py>(
    py: Python<'py>,
    join: String,
    token: String,
    name: String,
    shape: Option<PyRef<'_, PyLinkShape>>,
    max_message_bytes: u64,
    idle_timeout: f64,
    handshake_timeout: f64,
    ping_interval: f64,
    recv_queue: usize,
    segmentation_offload: bool,
) -> PyResult<Bound<'py, PyAny>> {
    fork_guard()?;
    let cfg = config(
        max_message_bytes,
        idle_timeout,
        handshake_timeout,
        ping_interval,
        recv_queue,
        segmentation_offload,
    )?;
    let shape = shape.map(|s| s.inner.clone()).unwrap_or_default();
    future_into_py(py, async move {
        let link = transport::connect(&join, &token, &name, shape, cfg).await?;
        Ok(PyConnection {
            inner: Arc::new(link),
        })
    })
}

/// A borrowed bytes-like object kept alive while a send runs without the GIL.
struct Held(PyBuffer<u8>);

impl Held {
    fn new(buf: PyBuffer<u8>) -> Result<Self> {
        if !buf.is_c_contiguous() {
            return Err(Error::NonContiguous { index: 0 });
        }
        Ok(Held(buf))
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: C-contiguous u8 memory that `self.0` keeps exported (and
        // its owner locked against resizing) for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.0.buf_ptr() as *const u8, self.0.len_bytes()) }
    }
}

/// One authenticated link.
#[pyclass(module = "hypergpu._core", name = "TransportConnection", frozen)]
pub struct PyConnection {
    inner: Arc<Link>,
}

#[pymethods]
impl PyConnection {
    #[getter]
    fn peer_name(&self) -> String {
        self.inner.peer_name().to_string()
    }

    /// `(host, port)` of the peer.
    #[getter]
    fn remote_address(&self) -> (String, u16) {
        let a = self.inner.remote_address();
        (a.ip().to_string(), a.port())
    }

    #[getter]
    fn peer_max_message_bytes(&self) -> u64 {
        self.inner.peer_max_message_bytes()
    }

    #[getter]
    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Awaitable: send one wire frame on its own stream, after checking it
    /// (header, payload checksum, the peer's size limit). Resolves once QUIC
    /// holds every byte (waiting while the peer is behind), or with `acked`
    /// once the peer has acknowledged every byte.
    #[pyo3(signature = (frame, timeout=None, *, acked=false))]
    fn send<'py>(
        &self,
        py: Python<'py>,
        frame: PyBuffer<u8>,
        timeout: Option<f64>,
        acked: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.send_impl(py, frame, timeout, true, acked)
    }

    /// Like `send` but without checking the frame: for testing how peers
    /// handle bad input.
    #[pyo3(signature = (frame, timeout=None, *, acked=false))]
    fn send_unchecked<'py>(
        &self,
        py: Python<'py>,
        frame: PyBuffer<u8>,
        timeout: Option<f64>,
        acked: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.send_impl(py, frame, timeout, false, acked)
    }

    /// Awaitable: the next complete, verified frame, as bytes.
    #[pyo3(signature = (timeout=None))]
    fn recv<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        fork_guard()?;
        let timeout = opt_timeout(timeout)?;
        if let Some(frame) = self.inner.try_recv() {
            return ready(py, into_bytes(py, frame)?.into_bound(py).into_any());
        }
        let link = self.inner.clone();
        future_into_py(py, async move {
            let frame = link.recv(timeout).await?;
            Python::attach(|py| into_bytes(py, frame))
        })
    }

    /// Link metrics: RTT, bytes, goodput, QUIC loss and congestion state,
    /// and the shaper's drops by cause.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        d.set_item("age_s", s.age_s)?;
        d.set_item("srtt_ms", s.srtt_ms)?;
        d.set_item("rtt_samples_ms", s.rtt_samples_ms.clone())?;
        d.set_item("bytes_sent", s.app_bytes_sent)?;
        d.set_item("bytes_received", s.app_bytes_received)?;
        d.set_item("messages_sent", s.messages_sent)?;
        d.set_item("messages_received", s.messages_received)?;
        let age = s.age_s.max(1e-9);
        d.set_item("goodput_bps", s.app_bytes_received as f64 * 8.0 / age)?;
        d.set_item("send_goodput_bps", s.app_bytes_sent as f64 * 8.0 / age)?;
        d.set_item("refused_too_large", s.refused_too_large)?;
        d.set_item("refused_by_peer", s.refused_by_peer)?;
        d.set_item("unacked_messages", s.unacked_messages)?;
        d.set_item("udp_bytes_sent", s.udp_bytes_sent)?;
        d.set_item("udp_bytes_received", s.udp_bytes_received)?;
        d.set_item("udp_datagrams_sent", s.udp_datagrams_sent)?;
        d.set_item("udp_datagrams_received", s.udp_datagrams_received)?;
        d.set_item("sent_packets", s.sent_packets)?;
        d.set_item("lost_packets", s.lost_packets)?;
        d.set_item("lost_bytes", s.lost_bytes)?;
        d.set_item("congestion_events", s.congestion_events)?;
        d.set_item("cwnd", s.cwnd)?;
        d.set_item("mtu", s.mtu)?;
        let drops = PyDict::new(py);
        drops.set_item("egress", drops_dict(py, &s.shaper.egress)?)?;
        drops.set_item("ingress", drops_dict(py, &s.shaper.ingress)?)?;
        d.set_item("shaper_drops", drops)?;
        let passed = PyDict::new(py);
        for (dir, st) in [("egress", &s.shaper.egress), ("ingress", &s.shaper.ingress)] {
            let p = PyDict::new(py);
            p.set_item("packets", st.packets)?;
            p.set_item("bytes", st.bytes)?;
            p.set_item("delivered_packets", st.delivered_packets)?;
            p.set_item("delivered_bytes", st.delivered_bytes)?;
            passed.set_item(dir, p)?;
        }
        d.set_item("shaper", passed)?;
        Ok(d)
    }

    /// Reshape this link now (restarting its outage/schedule clock).
    fn set_shape(&self, shape: &PyLinkShape) -> Result<()> {
        self.inner.set_shape(shape.inner.clone())
    }

    #[getter]
    fn shape(&self) -> PyLinkShape {
        PyLinkShape {
            inner: self.inner.shape(),
        }
    }

    /// Awaitable: close the link, telling the peer `reason`.
    #[pyo3(signature = (reason=String::new()))]
    fn close<'py>(&self, py: Python<'py>, reason: String) -> PyResult<Bound<'py, PyAny>> {
        fork_guard()?;
        let link = self.inner.clone();
        future_into_py(py, async move {
            link.close(&reason).await;
            Ok(())
        })
    }
}

impl PyConnection {
    fn send_impl<'py>(
        &self,
        py: Python<'py>,
        frame: PyBuffer<u8>,
        timeout: Option<f64>,
        check: bool,
        acked: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        fork_guard()?;
        let timeout = opt_timeout(timeout)?;
        let held = Held::new(frame)?;
        let link = self.inner.clone();
        let mut send = Box::pin(async move {
            let bytes = held.bytes();
            if check {
                link.send(bytes, timeout, acked).await?;
            } else {
                link.send_unchecked(bytes, timeout, acked).await?;
            }
            drop(held);
            Ok(())
        });
        // Most sends complete at once (stream credit and window to spare):
        // do those here and skip two thread hops; the rest go to the runtime
        // and resume from where this poll left them.
        let _runtime = pyo3_async_runtimes::tokio::get_runtime().enter();
        match py.detach(|| poll_once(&mut send)) {
            Poll::Ready(done) => {
                done?;
                ready(py, py.None().into_bound(py))
            }
            Poll::Pending => future_into_py(py, send),
        }
    }
}

/// A large frame assembled straight into a new `bytes` object.
struct PyBytesFrame {
    obj: Py<PyBytes>,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: `ptr` points into `obj`'s storage, which lives as long as `obj`
// and is only touched by whoever owns this value.
unsafe impl Send for PyBytesFrame {}

impl FrameBuf for PyBytesFrame {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes at `ptr` belong to `obj`, kept alive by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; no Python code can see the object until the frame
        // is complete and handed over, so writing into it breaks no promise
        // that `bytes` are immutable.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

fn py_bytes_frame(len: usize) -> Option<Box<dyn FrameBuf>> {
    Python::attach(|py| {
        let obj = PyBytes::new_with(py, len, |_| Ok(())).ok()?;
        let ptr = obj.as_bytes().as_ptr() as *mut u8;
        Some(Box::new(PyBytesFrame {
            obj: obj.unbind(),
            ptr,
            len,
        }) as Box<dyn FrameBuf>)
    })
}

/// The frame as `bytes`: the object it was assembled in, or a copy of a small one.
fn into_bytes(py: Python<'_>, frame: Box<dyn FrameBuf>) -> PyResult<Py<PyBytes>> {
    match frame.into_any().downcast::<PyBytesFrame>() {
        Ok(f) => Ok(f.obj),
        Err(other) => match other.downcast::<Vec<u8>>() {
            Ok(v) => Ok(PyBytes::new(py, &v).unbind()),
            Err(_) => Err(Error::Transport("frame in an unknown kind of buffer".into()).into()),
        },
    }
}

/// Poll a future once, without a task to wake.
fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = Waker::from(Arc::new(Noop));
    Pin::new(fut).poll(&mut Context::from_waker(&waker))
}

/// An awaitable that is already resolved with `value`.
fn ready<'py>(py: Python<'py>, value: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let fut = py
        .import("asyncio")?
        .call_method0("get_running_loop")?
        .call_method0("create_future")?;
    fut.call_method1("set_result", (value,))?;
    Ok(fut)
}

fn drops_dict<'py>(py: Python<'py>, s: &DirectionStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for cause in DropCause::ALL {
        d.set_item(cause.name(), s.drops[cause as usize])?;
    }
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyLinkShape>()?;
    m.add_class::<PyServer>()?;
    m.add_class::<PyConnection>()?;
    m.add_function(wrap_pyfunction!(transport_connect, m)?)?;
    m.add(
        "LINK_PROFILES",
        PROFILES.iter().map(|p| p.0).collect::<Vec<_>>(),
    )?;
    Ok(())
}
