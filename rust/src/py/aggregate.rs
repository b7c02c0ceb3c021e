//! Python face of [`crate::aggregate`]: borrows the updates as slices,
//! runs the kernels with the interpreter detached, and hands results back
//! as NumPy arrays that take over the Rust buffers (no copy).

use std::sync::{Mutex, MutexGuard};

use numpy::{PyArray1, PyArrayDyn, PyArrayMethods};
use pyo3::prelude::*;

use crate::aggregate::{self, Accumulator, MeanOptions};
use crate::dtype::Values;
use crate::error::{Error, Result};
use crate::py::buffers::{borrow_all, Array};

type F32Array<'py> = Bound<'py, PyArrayDyn<f32>>;
type F64Array<'py> = Bound<'py, PyArray1<f64>>;

fn values_of<'a>(arrays: &'a [Array<'_>]) -> Result<Vec<Values<'a>>> {
    arrays
        .iter()
        .enumerate()
        .map(|(i, a)| a.values(i))
        .collect()
}

/// Move `v` into a NumPy array of `shape` (a reshaped view, not a copy).
fn to_numpy<'py>(py: Python<'py>, v: Vec<f32>, shape: &[usize]) -> PyResult<F32Array<'py>> {
    PyArray1::from_vec(py, v).reshape(shape.to_vec())
}

/// Weighted mean with norms, clipping and non-finite handling; returns
/// `(mean, norms, skipped, clipped, applied_weights)`.
#[pyfunction]
#[pyo3(signature = (updates, weights=None, clip_norm=None, skip_nonfinite=false))]
#[allow(clippy::type_complexity)]
fn weighted_mean<'py>(
    py: Python<'py>,
    updates: Vec<Bound<'py, PyAny>>,
    weights: Option<Vec<f64>>,
    clip_norm: Option<f64>,
    skip_nonfinite: bool,
) -> PyResult<(
    F32Array<'py>,
    F64Array<'py>,
    Vec<usize>,
    Vec<usize>,
    F64Array<'py>,
)> {
    let (arrays, shape) = borrow_all(&updates)?;
    let values = values_of(&arrays)?;
    let opts = MeanOptions {
        clip_norm,
        skip_nonfinite,
    };
    let out = py.detach(|| aggregate::weighted_mean(&values, weights.as_deref(), opts))?;
    Ok((
        to_numpy(py, out.mean, &shape)?,
        PyArray1::from_vec(py, out.norms),
        out.skipped,
        out.clipped,
        PyArray1::from_vec(py, out.weights),
    ))
}

/// Coordinate-wise median; returns `(median, skipped)`.
#[pyfunction]
#[pyo3(signature = (updates, skip_nonfinite=false))]
fn coordinate_median<'py>(
    py: Python<'py>,
    updates: Vec<Bound<'py, PyAny>>,
    skip_nonfinite: bool,
) -> PyResult<(F32Array<'py>, Vec<usize>)> {
    let (arrays, shape) = borrow_all(&updates)?;
    let values = values_of(&arrays)?;
    let out = py.detach(|| aggregate::coordinate_median(&values, skip_nonfinite))?;
    Ok((to_numpy(py, out.result, &shape)?, out.skipped))
}

/// Coordinate-wise trimmed mean; returns `(mean, skipped)`.
#[pyfunction]
#[pyo3(signature = (updates, trim, skip_nonfinite=false))]
fn trimmed_mean<'py>(
    py: Python<'py>,
    updates: Vec<Bound<'py, PyAny>>,
    trim: f64,
    skip_nonfinite: bool,
) -> PyResult<(F32Array<'py>, Vec<usize>)> {
    let (arrays, shape) = borrow_all(&updates)?;
    let values = values_of(&arrays)?;
    let out = py.detach(|| aggregate::trimmed_mean(&values, trim, skip_nonfinite))?;
    Ok((to_numpy(py, out.result, &shape)?, out.skipped))
}

/// Krum / multi-Krum; returns `(result, selected, scores, skipped)`.
#[pyfunction]
#[pyo3(signature = (updates, f, m=1, skip_nonfinite=false))]
#[allow(clippy::type_complexity)]
fn krum<'py>(
    py: Python<'py>,
    updates: Vec<Bound<'py, PyAny>>,
    f: usize,
    m: usize,
    skip_nonfinite: bool,
) -> PyResult<(F32Array<'py>, Vec<usize>, F64Array<'py>, Vec<usize>)> {
    let (arrays, shape) = borrow_all(&updates)?;
    let values = values_of(&arrays)?;
    let out = py.detach(|| aggregate::krum(&values, f, m, skip_nonfinite))?;
    Ok((
        to_numpy(py, out.result, &shape)?,
        out.selected,
        PyArray1::from_vec(py, out.scores),
        out.skipped,
    ))
}

/// Each update's cosine similarity with `reference` (NaN where undefined).
#[pyfunction]
fn cosines<'py>(
    py: Python<'py>,
    updates: Vec<Bound<'py, PyAny>>,
    reference: Bound<'py, PyAny>,
) -> PyResult<F64Array<'py>> {
    let (arrays, _) = borrow_all(&updates)?;
    let values = values_of(&arrays)?;
    let reference = Array::borrow(&reference, updates.len())?;
    let reference = reference.values(updates.len())?;
    let out = py.detach(|| aggregate::cosines(&values, &reference))?;
    Ok(PyArray1::from_vec(py, out))
}

/// A running weighted sum that updates are folded into as they arrive.
///
/// Safe to share between threads: adds are serialised by a lock that is
/// only ever waited on with the interpreter detached.
#[pyclass(module = "hypergpu._core", name = "UpdateAccumulator", frozen)]
pub struct PyAccumulator {
    inner: Mutex<Accumulator>,
}

impl PyAccumulator {
    fn lock(&self) -> Result<MutexGuard<'_, Accumulator>> {
        // Only a panic inside a kernel could poison the lock; refuse to
        // serve state that may be half-updated rather than guess.
        self.inner.lock().map_err(|_| {
            Error::InvalidArgument(
                "the accumulator was left inconsistent by an internal error".into(),
            )
        })
    }
}

#[pymethods]
impl PyAccumulator {
    #[new]
    fn new(shape: Vec<usize>) -> Result<Self> {
        Ok(PyAccumulator {
            inner: Mutex::new(Accumulator::new(shape)?),
        })
    }

    /// Fold in `update`; returns its pre-clip L2 norm. Atomic: a rejected
    /// update leaves the accumulator unchanged.
    #[pyo3(signature = (update, weight=1.0, clip_norm=None))]
    fn add(
        &self,
        py: Python<'_>,
        update: &Bound<'_, PyAny>,
        weight: f64,
        clip_norm: Option<f64>,
    ) -> Result<f64> {
        let index = py.detach(|| self.lock().map(|a| a.count()))?;
        let array = Array::borrow(update, index)?;
        let shape = array.shape();
        let values = array.values(index)?;
        py.detach(|| self.lock()?.add(values, &shape, weight, clip_norm))
    }

    /// The weighted mean of everything added so far.
    fn finalize<'py>(&self, py: Python<'py>) -> PyResult<F32Array<'py>> {
        let (mean, shape) = py.detach(|| -> Result<_> {
            let acc = self.lock()?;
            Ok((acc.finalize()?, acc.shape().to_vec()))
        })?;
        to_numpy(py, mean, &shape)
    }

    /// Forget every update.
    fn reset(&self, py: Python<'_>) -> Result<()> {
        py.detach(|| {
            self.lock()?.reset();
            Ok(())
        })
    }

    #[getter]
    fn count(&self, py: Python<'_>) -> Result<usize> {
        py.detach(|| Ok(self.lock()?.count()))
    }

    #[getter]
    fn total_weight(&self, py: Python<'_>) -> Result<f64> {
        py.detach(|| Ok(self.lock()?.total_weight()))
    }

    #[getter]
    fn shape(&self, py: Python<'_>) -> Result<Vec<usize>> {
        py.detach(|| Ok(self.lock()?.shape().to_vec()))
    }

    /// `"f32"`, `"f16"` or `"bf16"` once an update was accepted, else None.
    #[getter]
    fn dtype(&self, py: Python<'_>) -> Result<Option<&'static str>> {
        py.detach(|| Ok(self.lock()?.dtype()))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyAccumulator>()?;
    m.add_function(wrap_pyfunction!(weighted_mean, m)?)?;
    m.add_function(wrap_pyfunction!(coordinate_median, m)?)?;
    m.add_function(wrap_pyfunction!(trimmed_mean, m)?)?;
    m.add_function(wrap_pyfunction!(krum, m)?)?;
    m.add_function(wrap_pyfunction!(cosines, m)?)?;
    Ok(())
}
