//! `TransportConfig`: the transport settings, defaulted from [`TransportConfig::default`] only.

use std::sync::Arc;

use pyo3::prelude::*;

use super::convert::positive_seconds;
use super::frames::py_bytes_frame;
use crate::error::Result;
use crate::transport::{FrameAllocator, TransportConfig};

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
        segmentation_offload = TransportConfig::default().segmentation_offload))]
    fn new(
        max_message_bytes: u64,
        idle_timeout: f64,
        handshake_timeout: f64,
        ping_interval: f64,
        recv_queue: usize,
        segmentation_offload: bool,
    ) -> Result<Self> {
        let inner = TransportConfig {
            max_message_bytes,
            idle_timeout: positive_seconds("idle_timeout", idle_timeout)?,
            handshake_timeout: positive_seconds("handshake_timeout", handshake_timeout)?,
            ping_interval: positive_seconds("ping_interval", ping_interval)?,
            recv_queue,
            segmentation_offload,
            frame_alloc: None,
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

    fn __repr__(&self) -> String {
        let c = &self.inner;
        format!(
            "TransportConfig(max_message_bytes={}, idle_timeout={:?}, handshake_timeout={:?}, \
             ping_interval={:?}, recv_queue={}, segmentation_offload={})",
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
