//! PyO3 bindings, one file per exposed concern. Kernels and protocol code
//! elsewhere in the crate know nothing of Python.

pub mod aggregate;
pub mod buffers;
pub mod compress;
pub mod convert;
pub mod errors;
pub mod frames;
pub mod link_stats;
pub mod runtime;
pub mod shaping;
pub mod transport;
pub mod transport_config;
pub mod wire;
