//! `hypergpu._core`: the byte-level core of HyperGPU.
//!
//! This file only wires modules together; each concern lives in its own
//! module and its Python face in `py/`.

pub mod aggregate;
pub mod compress;
pub mod dtype;
pub mod error;
pub mod shaping;
pub mod transport;
pub mod wire;

mod py;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    py::wire::register(m)?;
    py::aggregate::register(m)?;
    py::compress::register(m)?;
    py::shaping::register(m)?;
    py::transport::register(m)?;
    Ok(())
}
