//! The server's bounded log of peers it turned away or cut off.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

/// A peer the server turned away (or cut off), and why.
#[derive(Clone, Debug)]
pub struct Rejection {
    pub peer: SocketAddr,
    pub name: Option<String>,
    pub reason: String,
    /// Seconds since the server started.
    pub at_s: f64,
}

/// The server's log of rejections, bounded to the most recent ones.
pub struct Rejections {
    started: Instant,
    log: Mutex<(Vec<Rejection>, u64)>,
}

const REJECTIONS_KEPT: usize = 1000;

impl Rejections {
    pub(crate) fn new() -> Self {
        Rejections {
            started: Instant::now(),
            log: Mutex::new((Vec::new(), 0)),
        }
    }

    pub(crate) fn record(&self, peer: SocketAddr, name: Option<&str>, reason: &str) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.0.len() == REJECTIONS_KEPT {
            log.0.remove(0);
        }
        log.0.push(Rejection {
            peer,
            name: name.map(str::to_string),
            reason: reason.to_string(),
            at_s: self.started.elapsed().as_secs_f64(),
        });
        log.1 += 1;
    }

    /// The log (most recent last) and the total count since the start.
    pub(crate) fn snapshot(&self) -> (Vec<Rejection>, u64) {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
