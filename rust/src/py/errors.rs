//! Maps [`Error`] onto the exception classes defined once in
//! `hypergpu.errors` (a pure-Python module, so the hierarchy can use
//! multiple inheritance: `FrameError` is also a `ValueError`).
//!
//! One imported type per class and an exhaustive `match`: a new variant
//! without a class is a compile error, and a class missing from
//! `hypergpu.errors` fails loudly at first use rather than falling back.

use pyo3::import_exception;
use pyo3::prelude::*;

use crate::error::Error;

import_exception!(hypergpu.errors, EmptyInputError);
import_exception!(hypergpu.errors, ShapeMismatchError);
import_exception!(hypergpu.errors, DtypeMismatchError);
import_exception!(hypergpu.errors, NonContiguousError);
import_exception!(hypergpu.errors, WeightsError);
import_exception!(hypergpu.errors, NonFiniteError);
import_exception!(hypergpu.errors, InvalidArgumentError);
import_exception!(hypergpu.errors, UnknownCodecError);
import_exception!(hypergpu.errors, CodecError);
import_exception!(hypergpu.errors, TruncatedFrameError);
import_exception!(hypergpu.errors, BadMagicError);
import_exception!(hypergpu.errors, UnsupportedVersionError);
import_exception!(hypergpu.errors, ChecksumError);
import_exception!(hypergpu.errors, FrameError);
import_exception!(hypergpu.errors, TransportError);
import_exception!(hypergpu.errors, AuthError);
import_exception!(hypergpu.errors, TimeoutError);
import_exception!(hypergpu.errors, MessageTooLargeError);
import_exception!(hypergpu.errors, ConnectionClosedError);

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        let message = err.to_string();
        match err {
            Error::Empty(_) => EmptyInputError::new_err(message),
            Error::ShapeMismatch { .. } => ShapeMismatchError::new_err(message),
            Error::DtypeMismatch { .. } => DtypeMismatchError::new_err(message),
            Error::NonContiguous { .. } => NonContiguousError::new_err(message),
            Error::Weights(_) => WeightsError::new_err(message),
            // `update_index` on the Python side names the offending update.
            Error::NonFinite { update, .. } => NonFiniteError::new_err((message, update)),
            Error::InvalidArgument(_) => InvalidArgumentError::new_err(message),
            Error::UnknownCodec(_) => UnknownCodecError::new_err(message),
            Error::Codec(_) => CodecError::new_err(message),
            Error::Truncated { .. } => TruncatedFrameError::new_err(message),
            Error::BadMagic { .. } => BadMagicError::new_err(message),
            Error::UnsupportedVersion { .. } => UnsupportedVersionError::new_err(message),
            Error::Checksum { .. } => ChecksumError::new_err(message),
            Error::Frame(_) => FrameError::new_err(message),
            Error::Transport(_) => TransportError::new_err(message),
            Error::Auth(_) => AuthError::new_err(message),
            Error::Timeout(_) => TimeoutError::new_err(message),
            Error::TooLarge { .. } => MessageTooLargeError::new_err(message),
            Error::Closed(_) => ConnectionClosedError::new_err(message),
        }
    }
}
