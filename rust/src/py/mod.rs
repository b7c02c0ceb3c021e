//! PyO3 bindings, one file per exposed concern. Kernels and protocol code
//! elsewhere in the crate know nothing of Python.

pub mod aggregate;
pub mod buffers;
pub mod compress;
pub mod errors;
pub mod transport;
pub mod wire;
