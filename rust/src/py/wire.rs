//! Python face of [`crate::wire`]: encode and decode frames held in any
//! bytes-like object, without copying the payload.

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::error::{Error, Result};
use crate::wire::{self, CodecId, DType, Header, MessageKind};

/// One tensor inside a frame's payload.
#[pyclass(module = "hypergpu._core", name = "TensorSpec", frozen, get_all, eq)]
#[derive(Clone, PartialEq)]
pub struct PyTensorSpec {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    nbytes: u64,
}

#[pymethods]
impl PyTensorSpec {
    #[new]
    fn new(name: String, dtype: String, shape: Vec<u64>, nbytes: u64) -> Result<Self> {
        DType::from_name(&dtype)?;
        Ok(PyTensorSpec {
            name,
            dtype,
            shape,
            nbytes,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "TensorSpec(name={:?}, dtype={:?}, shape={:?}, nbytes={})",
            self.name, self.dtype, self.shape, self.nbytes
        )
    }
}

impl PyTensorSpec {
    fn to_spec(&self) -> Result<wire::TensorSpec> {
        Ok(wire::TensorSpec {
            name: self.name.clone(),
            dtype: DType::from_name(&self.dtype)?,
            shape: self.shape.clone(),
            nbytes: self.nbytes,
        })
    }
}

/// A decoded frame header.
#[pyclass(module = "hypergpu._core", name = "FrameHeader", frozen, get_all)]
pub struct PyFrameHeader {
    kind: String,
    codec: String,
    zstd: bool,
    round: u64,
    node_id: u32,
    tensors: Vec<PyTensorSpec>,
    payload_len: u64,
    payload_crc: u32,
    header_len: usize,
}

#[pymethods]
impl PyFrameHeader {
    fn __repr__(&self) -> String {
        format!(
            "FrameHeader(kind={:?}, codec={:?}, zstd={}, round={}, node_id={}, tensors={}, payload_len={})",
            self.kind,
            self.codec,
            self.zstd,
            self.round,
            self.node_id,
            self.tensors.len(),
            self.payload_len
        )
    }
}

impl PyFrameHeader {
    pub fn from_header(h: &Header, header_len: usize) -> Self {
        PyFrameHeader {
            kind: h.kind.name().into(),
            codec: h.codec.name().into(),
            zstd: h.flags & wire::FLAG_ZSTD != 0,
            round: h.round,
            node_id: h.node_id,
            tensors: h
                .tensors
                .iter()
                .map(|t| PyTensorSpec {
                    name: t.name.clone(),
                    dtype: t.dtype.name().into(),
                    shape: t.shape.clone(),
                    nbytes: t.nbytes,
                })
                .collect(),
            payload_len: h.payload_len,
            payload_crc: h.payload_crc,
            header_len,
        }
    }
}

/// Read-only view of a contiguous bytes-like object's memory.
pub fn bytes_of(buf: &PyBuffer<u8>) -> Result<&[u8]> {
    if !buf.is_c_contiguous() {
        return Err(Error::NonContiguous { index: 0 });
    }
    // SAFETY: the buffer is C-contiguous, u8-typed and kept alive (and its
    // exporter locked against resizing) by `buf` for the returned lifetime.
    Ok(unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes()) })
}

/// Encode a frame carrying `payload`.
#[pyfunction]
#[pyo3(signature = (kind, payload, *, round=0, node_id=0, codec="raw", zstd=false, tensors=Vec::new()))]
#[allow(clippy::too_many_arguments)]
fn encode_frame<'py>(
    py: Python<'py>,
    kind: &str,
    payload: PyBuffer<u8>,
    round: u64,
    node_id: u32,
    codec: &str,
    zstd: bool,
    tensors: Vec<PyRef<'py, PyTensorSpec>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let kind = MessageKind::from_name(kind)?;
    let codec = CodecId::from_name(codec)?;
    let tensors = tensors
        .iter()
        .map(|t| t.to_spec())
        .collect::<Result<Vec<_>>>()?;
    let body = bytes_of(&payload)?;
    let flags = if zstd { wire::FLAG_ZSTD } else { 0 };
    let header =
        py.detach(|| Header::for_payload(kind, codec, flags, round, node_id, tensors, body));
    let head = header.encode()?;
    PyBytes::new_with(py, head.len() + body.len(), |out| {
        out[..head.len()].copy_from_slice(&head);
        out[head.len()..].copy_from_slice(body);
        Ok(())
    })
}

/// Decode and verify a whole frame; returns the header and the payload's
/// offset in `data` (slice a memoryview there to read it without a copy).
#[pyfunction]
#[pyo3(signature = (data, max_payload=u64::MAX))]
fn decode_frame(
    py: Python<'_>,
    data: PyBuffer<u8>,
    max_payload: u64,
) -> Result<(PyFrameHeader, usize)> {
    let bytes = bytes_of(&data)?;
    let (header, _) = py.detach(|| wire::decode_frame(bytes, max_payload))?;
    let header_len = bytes.len() - header.payload_len as usize;
    Ok((PyFrameHeader::from_header(&header, header_len), header_len))
}

/// Length of the whole header, from its first `HEADER_FIXED_LEN` bytes.
#[pyfunction]
fn frame_header_len(data: PyBuffer<u8>) -> Result<usize> {
    Header::peek_len(bytes_of(&data)?)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTensorSpec>()?;
    m.add_class::<PyFrameHeader>()?;
    m.add_function(wrap_pyfunction!(encode_frame, m)?)?;
    m.add_function(wrap_pyfunction!(decode_frame, m)?)?;
    m.add_function(wrap_pyfunction!(frame_header_len, m)?)?;
    m.add("FRAME_VERSION", wire::VERSION)?;
    m.add("HEADER_FIXED_LEN", wire::FIXED_LEN)?;
    Ok(())
}
