//! Borrowing NumPy arrays as slices without copying.
//!
//! Kernels accept C-contiguous float32, float16, or uint16 arrays; a uint16
//! array is read as bfloat16 bit patterns (NumPy has no bfloat16 dtype; the
//! Python layer hands torch bf16 tensors over as such a view).

use half::{bf16, f16};
use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::dtype::Values;
use crate::error::{Error, Result};

/// A borrowed array of one of the supported element types.
pub enum Array<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    F16(PyReadonlyArrayDyn<'py, f16>),
    Bf16(PyReadonlyArrayDyn<'py, u16>),
}

impl<'py> Array<'py> {
    /// Borrow `obj` (the `index`-th argument, for error messages).
    pub fn borrow(obj: &Bound<'py, PyAny>, index: usize) -> Result<Self> {
        if let Ok(a) = obj.cast::<PyArrayDyn<f32>>() {
            return Ok(Array::F32(a.readonly()));
        }
        if let Ok(a) = obj.cast::<PyArrayDyn<f16>>() {
            return Ok(Array::F16(a.readonly()));
        }
        if let Ok(a) = obj.cast::<PyArrayDyn<u16>>() {
            return Ok(Array::Bf16(a.readonly()));
        }
        let got = obj
            .getattr("dtype")
            .and_then(|d| d.str().map(|s| s.to_string()))
            .unwrap_or_else(|_| {
                obj.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            });
        Err(Error::DtypeMismatch {
            index,
            expected: "a numpy array of float32, float16 or uint16 (bfloat16 bits)".into(),
            got,
        })
    }

    pub fn shape(&self) -> Vec<usize> {
        match self {
            Array::F32(a) => a.shape().to_vec(),
            Array::F16(a) => a.shape().to_vec(),
            Array::Bf16(a) => a.shape().to_vec(),
        }
    }

    /// The elements as a slice; fails for non-contiguous arrays.
    pub fn values(&self, index: usize) -> Result<Values<'_>> {
        let err = |_| Error::NonContiguous { index };
        // `as_slice` also accepts Fortran order, whose memory order is not
        // the logical (C) order the kernels assume.
        let c_order = match self {
            Array::F32(a) => a.is_c_contiguous(),
            Array::F16(a) => a.is_c_contiguous(),
            Array::Bf16(a) => a.is_c_contiguous(),
        };
        if !c_order {
            return Err(Error::NonContiguous { index });
        }
        Ok(match self {
            Array::F32(a) => Values::F32(a.as_slice().map_err(err)?),
            Array::F16(a) => Values::F16(a.as_slice().map_err(err)?),
            Array::Bf16(a) => {
                let bits: &[u16] = a.as_slice().map_err(err)?;
                Values::Bf16(bytemuck::cast_slice::<u16, bf16>(bits))
            }
        })
    }
}

/// Borrow a list of same-shape, same-dtype arrays.
pub fn borrow_all<'py>(objs: &[Bound<'py, PyAny>]) -> Result<(Vec<Array<'py>>, Vec<usize>)> {
    if objs.is_empty() {
        return Err(Error::Empty("the list of updates is empty".into()));
    }
    let arrays = objs
        .iter()
        .enumerate()
        .map(|(i, o)| Array::borrow(o, i))
        .collect::<Result<Vec<_>>>()?;
    let shape = arrays[0].shape();
    let dtype = arrays[0].values(0)?.dtype_name();
    for (i, a) in arrays.iter().enumerate().skip(1) {
        let s = a.shape();
        if s != shape {
            return Err(Error::ShapeMismatch {
                index: i,
                expected: shape,
                got: s,
            });
        }
        let d = a.values(i)?.dtype_name();
        if d != dtype {
            return Err(Error::DtypeMismatch {
                index: i,
                expected: dtype.into(),
                got: d.into(),
            });
        }
    }
    Ok((arrays, shape))
}
