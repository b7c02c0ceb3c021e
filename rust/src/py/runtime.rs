//! asyncio ↔ the process's one tokio runtime: the fork guard and already-resolved awaitables.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};

use pyo3::prelude::*;

use crate::error::{Error, Result};

static RUNTIME_PID: OnceLock<u32> = OnceLock::new();

/// The runtime's threads do not survive `fork`; refuse to use it from a
/// child rather than hang.
pub fn fork_guard() -> Result<()> {
    let me = std::process::id();
    let owner = *RUNTIME_PID.get_or_init(|| me);
    if owner != me {
        return Err(Error::Transport(format!(
            "the transport runtime was started in process {owner}; this process ({me}) is a fork \
             of it and cannot use it (start transports only after forking, or use the 'spawn' \
             start method)"
        )));
    }
    Ok(())
}

/// Poll a future once, without a task to wake.
pub fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = Waker::from(Arc::new(Noop));
    Pin::new(fut).poll(&mut Context::from_waker(&waker))
}

/// An awaitable that is already resolved with `value`.
pub fn ready<'py>(py: Python<'py>, value: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let fut = py
        .import("asyncio")?
        .call_method0("get_running_loop")?
        .call_method0("create_future")?;
    fut.call_method1("set_result", (value,))?;
    Ok(fut)
}
