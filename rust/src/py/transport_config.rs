//! `TransportConfig`: the transport settings, defaulted from [`TransportConfig::default`] only.

use std::sync::Arc;

use pyo3::prelude::*;

use super::convert::positive_seconds;
use super::frames::py_bytes_frame;
use crate::error::Result;
use crate::transport::{AdmissionLimits, Congestion, FrameAllocator, TransportConfig};

/// Settings shared by `TransportServer.listen` and `transport_connect`;
/// validated when built.
#[pyclass(module = "hypergpu._core", name = "TransportConfig", frozen)]
#[derive(Clone)]
pub struct PyTransportConfig {
    inner: TransportConfig,
}

#[pymethods]
impl PyTransportConfig {
    #[new]
    #[pyo3(signature = (*,
        max_message_bytes = TransportConfig::default().max_message_bytes,
        idle_timeout = TransportConfig::default().idle_timeout.as_secs_f64(),
        handshake_timeout = TransportConfig::default().handshake_timeout.as_secs_f64(),
        ping_interval = TransportConfig::default().ping_interval.as_secs_f64(),
        recv_queue = TransportConfig::default().recv_queue,
        segmentation_offload = TransportConfig::default().segmentation_offload,
        hello_timeout = None,
        max_pending = AdmissionLimits::default().max_pending,
        max_pending_per_address = AdmissionLimits::default().max_pending_per_address,
        retry_above = AdmissionLimits::default().retry_above,
        congestion = TransportConfig::default().congestion.name()))]
    #[allow(clippy::too_many_arguments)] // the Python signature's keyword arguments, one each
    fn new(
        max_message_bytes: u64,
        idle_timeout: f64,
        handshake_timeout: f64,
        ping_interval: f64,
        recv_queue: usize,
        segmentation_offload: bool,
        hello_timeout: Option<f64>,
        max_pending: usize,
        max_pending_per_address: usize,
        retry_above: usize,
        congestion: &str,
    ) -> Result<Self> {
        let inner = TransportConfig {
            max_message_bytes,
            idle_timeout: positive_seconds("idle_timeout", idle_timeout)?,
            handshake_timeout: positive_seconds("handshake_timeout", handshake_timeout)?,
            ping_interval: positive_seconds("ping_interval", ping_interval)?,
            recv_queue,
            segmentation_offload,
            frame_alloc: None,
            hello_timeout: hello_timeout
                .map(|t| positive_seconds("hello_timeout", t))
                .transpose()?,
            admission: AdmissionLimits {
                max_pending,
                max_pending_per_address,
                retry_above,
            },
            congestion: Congestion::parse(congestion)?,
        };
        inner.validate()?;
        Ok(PyTransportConfig { inner })
    }

    /// Largest payload accepted; larger messages are refused unread.
    #[getter]
    fn max_message_bytes(&self) -> u64 {
        self.inner.max_message_bytes
    }

    /// Seconds a peer may stay silent before its link fails with a timeout.
    #[getter]
    fn idle_timeout(&self) -> f64 {
        self.inner.idle_timeout.as_secs_f64()
    }

    /// Seconds allowed for the TLS handshake plus the join-token exchange.
    #[getter]
    fn handshake_timeout(&self) -> f64 {
        self.inner.handshake_timeout.as_secs_f64()
    }

    /// Seconds between RTT probes.
    #[getter]
    fn ping_interval(&self) -> f64 {
        self.inner.ping_interval.as_secs_f64()
    }

    /// Complete frames held for `recv` before readers stop reading.
    #[getter]
    fn recv_queue(&self) -> usize {
        self.inner.recv_queue
    }

    /// Whether the kernel may split batches of datagrams (UDP GSO).
    #[getter]
    fn segmentation_offload(&self) -> bool {
        self.inner.segmentation_offload
    }

    /// Server: seconds from the TLS handshake within which a peer's hello
    /// must be accepted (`authorize`), during which it may send that one
    /// message only; None: links are open once the join token is checked.
    #[getter]
    fn hello_timeout(&self) -> Option<f64> {
        self.inner.hello_timeout.map(|d| d.as_secs_f64())
    }

    /// Server: joins in flight at once, all peers together.
    #[getter]
    fn max_pending(&self) -> usize {
        self.inner.admission.max_pending
    }

    /// Server: joins in flight at once from one IP address.
    #[getter]
    fn max_pending_per_address(&self) -> usize {
        self.inner.admission.max_pending_per_address
    }

    /// Server: joins in flight above which a new peer must first prove its
    /// address with a QUIC retry (0: every peer).
    #[getter]
    fn retry_above(&self) -> usize {
        self.inner.admission.retry_above
    }

    /// The congestion controller this end sends with: "cubic", "new_reno" or "bbr".
    #[getter]
    fn congestion(&self) -> &'static str {
        self.inner.congestion.name()
    }

    fn __repr__(&self) -> String {
        let c = &self.inner;
        format!(
            "TransportConfig(max_message_bytes={}, idle_timeout={:?}, handshake_timeout={:?}, \
             ping_interval={:?}, recv_queue={}, segmentation_offload={}, hello_timeout={}, \
             max_pending={}, max_pending_per_address={}, retry_above={}, congestion='{}')",
            c.max_message_bytes,
            c.idle_timeout.as_secs_f64(),
            c.handshake_timeout.as_secs_f64(),
            c.ping_interval.as_secs_f64(),
            c.recv_queue,
            if c.segmentation_offload {
                "True"
            } else {
                "False"
            },
            c.hello_timeout
                .map_or("None".to_string(), |d| format!("{:?}", d.as_secs_f64())),
            c.admission.max_pending,
            c.admission.max_pending_per_address,
            c.admission.retry_above,
            c.congestion.name(),
        )
    }
}

/// The settings to run a transport with (the defaults when `None`), with
/// large frames assembled straight into `bytes` objects.
pub fn resolve(config: Option<PyRef<'_, PyTransportConfig>>) -> TransportConfig {
    let mut cfg = config.map(|c| c.inner.clone()).unwrap_or_default();
    cfg.frame_alloc = Some(FrameAllocator(Arc::new(py_bytes_frame)));
    cfg
}
