//! The one error type of the core. Every fallible function returns
//! [`Result`]; `py::errors` maps each variant onto a class of
//! `hypergpu.errors`, so Python sees a typed exception, never a panic.

/// What went wrong, with enough detail to name the problem.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    // --- updates handed to a kernel ---------------------------------------
    #[error("empty input: {0}")]
    Empty(String),
    #[error("shape mismatch: update {index} has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        index: usize,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("dtype mismatch: update {index} is {got}, expected {expected}")]
    DtypeMismatch {
        index: usize,
        expected: String,
        got: String,
    },
    #[error("update {index} is not C-contiguous; pass a contiguous array (e.g. numpy.ascontiguousarray)")]
    NonContiguous { index: usize },
    #[error("invalid weights: {0}")]
    Weights(String),
    #[error("non-finite value in update {update} at position {position}")]
    NonFinite { update: usize, position: usize },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    // --- codecs --------------------------------------------------------------
    #[error("unknown codec: {0}")]
    UnknownCodec(String),
    #[error("codec error: {0}")]
    Codec(String),

    // --- wire frames ---------------------------------------------------------
    #[error("truncated frame: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("bad magic: expected {expected:#010x}, got {got:#010x}")]
    BadMagic { expected: u32, got: u32 },
    #[error("unsupported frame version {got} (this build speaks {supported})")]
    UnsupportedVersion { got: u16, supported: u16 },
    #[error("checksum mismatch: header says {expected:#010x}, payload hashes to {got:#010x}")]
    Checksum { expected: u32, got: u32 },
    #[error("malformed frame: {0}")]
    Frame(String),

    // --- transport -----------------------------------------------------------
    #[error("transport error: {0}")]
    Transport(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("connection closed: {0}")]
    Closed(String),
}

pub type Result<T> = std::result::Result<T, Error>;
