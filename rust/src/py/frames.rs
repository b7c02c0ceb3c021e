//! Received frames assembled straight into Python `bytes` objects (no copy for large ones).

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::error::Error;
use crate::transport::FrameBuf;

/// A large frame assembled straight into a new `bytes` object.
struct PyBytesFrame {
    obj: Py<PyBytes>,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: `ptr` points into `obj`'s storage, which lives as long as `obj`
// and is only touched by whoever owns this value.
unsafe impl Send for PyBytesFrame {}

impl FrameBuf for PyBytesFrame {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes at `ptr` belong to `obj`, kept alive by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; no Python code can see the object until the frame
        // is complete and handed over, so writing into it breaks no promise
        // that `bytes` are immutable.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

pub fn py_bytes_frame(len: usize) -> Option<Box<dyn FrameBuf>> {
    Python::attach(|py| {
        let obj = PyBytes::new_with(py, len, |_| Ok(())).ok()?;
        let ptr = obj.as_bytes().as_ptr() as *mut u8;
        Some(Box::new(PyBytesFrame {
            obj: obj.unbind(),
            ptr,
            len,
        }) as Box<dyn FrameBuf>)
    })
}

/// The frame as `bytes`: the object it was assembled in, or a copy of a small one.
pub fn into_bytes(py: Python<'_>, frame: Box<dyn FrameBuf>) -> PyResult<Py<PyBytes>> {
    match frame.into_any().downcast::<PyBytesFrame>() {
        Ok(f) => Ok(f.obj),
        Err(other) => match other.downcast::<Vec<u8>>() {
            Ok(v) => Ok(PyBytes::new(py, &v).unbind()),
            Err(_) => Err(Error::Transport("frame in an unknown kind of buffer".into()).into()),
        },
    }
}
