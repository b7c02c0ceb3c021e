//! Network shaping below QUIC, at the UDP-datagram layer: a pure
//! [`Shaper`] deciding each datagram's fate on any clock, and a socket
//! wrapper applying those decisions for quinn.

pub mod config;
pub mod shaper;
pub mod socket;

pub use config::{BurstLoss, DirectionShape, JitterDist, LinkShape, Outage, PROFILES};
pub use shaper::{DirectionStats, DropCause, LinkShaper, Shaper, Verdict};
pub use socket::{LinkCounters, ShapedSocket};
