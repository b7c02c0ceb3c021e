//! Maps [`Error`] onto the exception classes defined once in
//! `hypergpu.errors` (a pure-Python module, so the hierarchy can use
//! multiple inheritance: `FrameError` is also a `ValueError`).

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::error::Error;

fn class_name(err: &Error) -> &'static str {
    match err {
        Error::Empty(_) => "EmptyInputError",
        Error::ShapeMismatch { .. } => "ShapeMismatchError",
        Error::DtypeMismatch { .. } => "DtypeMismatchError",
        Error::NonContiguous { .. } => "NonContiguousError",
        Error::Weights(_) => "WeightsError",
        Error::NonFinite { .. } => "NonFiniteError",
        Error::InvalidArgument(_) => "InvalidArgumentError",
        Error::UnknownCodec(_) => "UnknownCodecError",
        Error::Codec(_) => "CodecError",
        Error::Truncated { .. } => "TruncatedFrameError",
        Error::BadMagic { .. } => "BadMagicError",
        Error::UnsupportedVersion { .. } => "UnsupportedVersionError",
        Error::Checksum { .. } => "ChecksumError",
        Error::Frame(_) => "FrameError",
        Error::Transport(_) => "TransportError",
        Error::Auth(_) => "AuthError",
        Error::Timeout(_) => "TimeoutError",
        Error::TooLarge { .. } => "MessageTooLargeError",
        Error::Closed(_) => "ConnectionClosedError",
    }
}

/// Build the Python exception for `err`.
pub fn to_pyerr(py: Python<'_>, err: &Error) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let cls = py.import("hypergpu.errors")?.getattr(class_name(err))?;
        let message = err.to_string();
        let args = match err {
            Error::NonFinite { update, .. } => PyTuple::new(
                py,
                [
                    message.into_pyobject(py)?.into_any(),
                    update.into_pyobject(py)?.into_any(),
                ],
            )?,
            _ => PyTuple::new(py, [message])?,
        };
        Ok(PyErr::from_value(cls.call1(args)?))
    };
    // Only an unimportable `hypergpu.errors` could fail here; keep the message.
    build().unwrap_or_else(|_| PyRuntimeError::new_err(err.to_string()))
}

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        Python::attach(|py| to_pyerr(py, &err))
    }
}
