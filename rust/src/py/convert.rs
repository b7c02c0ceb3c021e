//! Seconds given as Python floats, checked and turned into [`Duration`]s.

use std::time::Duration;

use crate::error::{Error, Result};

/// `v` seconds, finite and not negative; `name` says which argument was wrong.
pub fn seconds(name: &str, v: f64) -> Result<Duration> {
    if !v.is_finite() || v < 0.0 {
        return Err(Error::InvalidArgument(format!(
            "{name} must be a finite number >= 0, got {v}"
        )));
    }
    Duration::try_from_secs_f64(v)
        .map_err(|_| Error::InvalidArgument(format!("{name} is out of range: {v}")))
}

/// Like [`seconds`], and not zero.
pub fn positive_seconds(name: &str, v: f64) -> Result<Duration> {
    let d = seconds(name, v)?;
    if d.is_zero() {
        return Err(Error::InvalidArgument(format!(
            "{name} must be positive, got {v}"
        )));
    }
    Ok(d)
}

/// An optional `timeout` argument.
pub fn opt_timeout(v: Option<f64>) -> Result<Option<Duration>> {
    v.map(|t| positive_seconds("timeout", t)).transpose()
}
