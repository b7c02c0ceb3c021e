//! Python face of [`crate::compress`]: encode a borrowed array into a
//! `bytes` payload written in place, decode any bytes-like payload into a
//! float32 NumPy array that takes over the decoded buffer.

use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::compress::{self, Codec, DEFAULT_ZSTD_LEVEL, MAX_BLOCK_SIZE};
use crate::error::{Error, Result};
use crate::py::buffers::Array;
use crate::py::wire::bytes_of;
use crate::wire::CodecId;

/// Decompression cap when the caller does not say how many elements to
/// expect (with `numel` the cap is the codec's own maximum).
const UNSIZED_ZSTD_CAP: usize = 1 << 34;

fn codec_of(name: &str, block_size: i64, k: Option<i64>) -> Result<Codec> {
    let block_size = u32::try_from(block_size).map_err(|_| {
        Error::InvalidArgument(format!(
            "{name} block_size must be in 1..={MAX_BLOCK_SIZE}, got {block_size}"
        ))
    })?;
    let k = k
        .map(|k| {
            u64::try_from(k)
                .map_err(|_| Error::InvalidArgument(format!("topk k must be ≥ 1, got {k}")))
        })
        .transpose()?;
    Codec::from_name(name, block_size, k)
}

/// Borrow the caller's residual: a writeable, contiguous 1-D float32 array
/// (argument 1 in error messages) that shares no memory with the update.
fn residual_slice<'py>(obj: &Bound<'py, PyAny>) -> Result<numpy::PyReadwriteArray1<'py, f32>> {
    let any = obj
        .cast::<PyArrayDyn<f32>>()
        .map_err(|_| Error::DtypeMismatch {
            index: 1,
            expected: "float32 (the residual)".into(),
            got: obj
                .getattr("dtype")
                .and_then(|d| d.str().map(|s| s.to_string()))
                .unwrap_or_else(|_| "a non-array".into()),
        })?;
    let shape = any.shape().to_vec();
    let arr = any
        .cast::<PyArray1<f32>>()
        .map_err(|_| Error::ShapeMismatch {
            index: 1,
            expected: vec![shape.iter().product()],
            got: shape,
        })?;
    arr.try_readwrite().map_err(|e| {
        Error::InvalidArgument(format!(
            "the residual must be writeable and share no memory with the update ({e})"
        ))
    })
}

/// Encode `update` with `codec`; returns the payload (zstd-compressed when
/// `zstd` is true). `residual` is the error-feedback buffer of any lossy
/// codec: the payload encodes `update + residual` and the residual keeps
/// what the payload lost, updated in place (left as it was on an error).
#[pyfunction]
#[pyo3(signature = (update, codec, *, block_size=256, k=None, residual=None, zstd=false, zstd_level=DEFAULT_ZSTD_LEVEL))]
#[allow(clippy::too_many_arguments)]
fn compress_encode<'py>(
    py: Python<'py>,
    update: &Bound<'py, PyAny>,
    codec: &str,
    block_size: i64,
    k: Option<i64>,
    residual: Option<&Bound<'py, PyAny>>,
    zstd: bool,
    zstd_level: i32,
) -> PyResult<Bound<'py, PyBytes>> {
    let codec = codec_of(codec, block_size, k)?;
    let array = Array::borrow(update, 0)?;
    let values = array.values(0)?;
    let mut residual = residual.map(residual_slice).transpose()?;
    let mut residual = match residual.as_mut() {
        Some(r) => Some(
            r.as_slice_mut()
                .map_err(|_| Error::NonContiguous { index: 1 })?,
        ),
        None => None,
    };
    if zstd {
        let packed = py.detach(|| -> Result<Vec<u8>> {
            let payload = compress::encode(values, codec, residual.as_deref_mut())?;
            compress::zstd_compress(&payload, zstd_level)
        })?;
        return Ok(PyBytes::new(py, &packed));
    }
    let len = codec.encoded_len(values.len())?;
    // Written straight into the bytes object: no intermediate buffer.
    PyBytes::new_with(py, len, |out| {
        py.detach(|| compress::encode_into(values, codec, residual, out))?;
        Ok(())
    })
}

/// Decode a payload to a flat float32 array. `numel`, when given, is the
/// element count expected (and bounds zstd decompression).
#[pyfunction]
#[pyo3(signature = (payload, codec, *, zstd=false, numel=None))]
fn compress_decode<'py>(
    py: Python<'py>,
    payload: PyBuffer<u8>,
    codec: &str,
    zstd: bool,
    numel: Option<usize>,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let id = CodecId::from_name(codec)?;
    let bytes = bytes_of(&payload)?;
    let unpacked = match zstd {
        true => {
            let cap = numel.map_or(UNSIZED_ZSTD_CAP, |n| compress::max_encoded_len(id, n));
            Some(py.detach(|| compress::zstd_decompress(bytes, cap))?)
        }
        false => None,
    };
    let raw = unpacked.as_deref().unwrap_or(bytes);
    let n = compress::decoded_len(raw, id)?;
    compress::check_numel(id, n, numel)?;
    // NumPy allocates the output (with huge pages for large arrays); the
    // decoder writes every element before Python can see it.
    // SAFETY: the array is new, so nothing else references its memory.
    let out = unsafe { PyArray1::<f32>::new(py, n, false) };
    let slice = unsafe { out.as_slice_mut() }.map_err(|_| Error::NonContiguous { index: 0 })?;
    py.detach(|| compress::decode_into(raw, id, slice))?;
    Ok(out)
}

/// Bytes of the payload (before zstd) for `numel` elements.
#[pyfunction]
#[pyo3(signature = (codec, numel, *, block_size=256, k=None))]
fn compress_encoded_len(
    codec: &str,
    numel: usize,
    block_size: i64,
    k: Option<i64>,
) -> Result<usize> {
    codec_of(codec, block_size, k)?.encoded_len(numel)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(compress_encode, m)?)?;
    m.add_function(wrap_pyfunction!(compress_decode, m)?)?;
    m.add_function(wrap_pyfunction!(compress_encoded_len, m)?)?;
    m.add("COMPRESS_MAX_BLOCK_SIZE", MAX_BLOCK_SIZE)?;
    m.add("COMPRESS_DEFAULT_ZSTD_LEVEL", DEFAULT_ZSTD_LEVEL)?;
    Ok(())
}
