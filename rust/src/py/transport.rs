//! Python face of [`crate::transport`]: the server, `transport_connect` and the connection.

use std::sync::Arc;
use std::task::Poll;

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_async_runtimes::tokio::future_into_py;

use super::convert::opt_timeout;
use super::frames::into_bytes;
use super::link_stats::PyLinkStats;
use super::runtime::{fork_guard, poll_once, ready};
use super::shaping::PyLinkShape;
use super::transport_config::{resolve, PyTransportConfig};
use crate::error::{Error, Result};
use crate::transport::{self, Identity, Link, Server};

/// The coordinator's listening endpoint.
#[pyclass(module = "hypergpu._core", name = "TransportServer", frozen)]
pub struct PyServer {
    inner: Arc<Server>,
}

#[pymethods]
impl PyServer {
    /// Awaitable: listen on `host:port` (0 picks a free port).
    #[staticmethod]
    #[allow(clippy::too_many_arguments)] // the Python signature's keyword arguments, one each
    #[pyo3(signature = (host, port, *, token, name="coordinator".to_string(), shape=None, config=None, identity=None))]
    fn listen<'py>(
        py: Python<'py>,
        host: String,
        port: u16,
        token: String,
        name: String,
        shape: Option<PyRef<'_, PyLinkShape>>,
        config: Option<PyRef<'_, PyTransportConfig>>,
        identity: Option<(Vec<u8>, Vec<u8>)>,
    ) -> PyResult<Bound<'py, PyAny>> {
        fork_guard()?;
        let cfg = resolve(config);
        let shape = shape.map(|s| s.inner.clone()).unwrap_or_default();
        let identity = identity
            .map(|(cert, key)| Identity::from_der(cert, key))
            .transpose()?;
        future_into_py(py, async move {
            let server = Server::listen(&host, port, &token, cfg, &name, shape, identity).await?;
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

    /// Joins in flight now and what admission did so far: `pending`,
    /// `admitted`, `refused_busy`, `retries`, `hello_timeouts`.
    fn admission<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let a = self.inner.admission();
        let d = PyDict::new(py);
        d.set_item("pending", a.pending)?;
        d.set_item("admitted", a.admitted)?;
        d.set_item("refused_busy", a.refused_busy)?;
        d.set_item("retries", a.retries)?;
        d.set_item("hello_timeouts", a.hello_timeouts)?;
        Ok(d)
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
#[pyo3(signature = (join, *, token, name, shape=None, config=None))]
fn transport_connect<'py>(
    py: Python<'py>,
    join: String,
    token: String,
    name: String,
    shape: Option<PyRef<'_, PyLinkShape>>,
    config: Option<PyRef<'_, PyTransportConfig>>,
) -> PyResult<Bound<'py, PyAny>> {
    fork_guard()?;
    let cfg = resolve(config);
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

    /// The join challenge of this connection (32 bytes): the one the
    /// coordinator sent, which a node signs in its hello.
    #[getter]
    fn challenge<'py>(&self, py: Python<'py>) -> Bound<'py, pyo3::types::PyBytes> {
        pyo3::types::PyBytes::new(py, &self.inner.challenge())
    }

    /// Let the peer send freely: its hello was accepted (a coordinator's
    /// link with a hello deadline takes nothing else until then).
    fn authorize(&self) {
        self.inner.authorize()
    }

    #[getter]
    fn is_authorized(&self) -> bool {
        self.inner.is_authorized()
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
    /// and the shaper's traffic and drops by cause.
    fn stats(&self) -> PyLinkStats {
        PyLinkStats::from(&self.inner.stats())
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

    /// Awaitable: close the link, telling the peer `reason`; with `refused`,
    /// as a refusal (the peer's side raises `AuthError`, which nodes do not retry).
    #[pyo3(signature = (reason=String::new(), *, refused=false))]
    fn close<'py>(
        &self,
        py: Python<'py>,
        reason: String,
        refused: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        fork_guard()?;
        let link = self.inner.clone();
        future_into_py(py, async move {
            if refused {
                link.refuse(&reason).await;
            } else {
                link.close(&reason).await;
            }
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

/// Awaitable, for tests of admission: `count` hostile connections to the
/// coordinator named by `join` that never say hello (see
/// `crate::transport::probe`); a list of dicts, one per connection.
#[pyfunction]
#[pyo3(signature = (join, *, count=1, token=None, streams=1, bytes_per_stream=0, hold=10.0))]
fn transport_strangers<'py>(
    py: Python<'py>,
    join: String,
    count: usize,
    token: Option<String>,
    streams: usize,
    bytes_per_stream: u64,
    hold: f64,
) -> PyResult<Bound<'py, PyAny>> {
    fork_guard()?;
    let hold = super::convert::positive_seconds("hold", hold)?;
    future_into_py(py, async move {
        let reports =
            transport::probe::strangers(&join, count, token, streams, bytes_per_stream, hold)
                .await?;
        Python::attach(|py| -> PyResult<Py<PyAny>> {
            let out = pyo3::types::PyList::empty(py);
            for r in reports {
                let d = PyDict::new(py);
                d.set_item("connected", r.connected)?;
                d.set_item("joined", r.joined)?;
                d.set_item("bytes_written", r.bytes_written)?;
                d.set_item("held_s", r.held_s)?;
                d.set_item("closed", r.closed)?;
                out.append(d)?;
            }
            Ok(out.into_any().unbind())
        })
    })
}

/// A new self-signed certificate and its PKCS#8 key, as DER, for a
/// coordinator to keep so its fingerprint (and join string) outlive it.
#[pyfunction]
fn transport_identity() -> PyResult<(Vec<u8>, Vec<u8>)> {
    Ok(Identity::self_signed()?.to_der())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTransportConfig>()?;
    m.add_class::<PyLinkStats>()?;
    m.add_class::<PyServer>()?;
    m.add_class::<PyConnection>()?;
    m.add_function(wrap_pyfunction!(transport_identity, m)?)?;
    m.add_function(wrap_pyfunction!(transport_connect, m)?)?;
    m.add_function(wrap_pyfunction!(transport_strangers, m)?)?;
    Ok(())
}
