//! `LinkStats`: a typed snapshot of one link's measurements, `as_dict()` for the JSON edge.

use std::collections::BTreeMap;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::shaping::{DirectionStats, DropCause, LinkCounters};
use crate::transport::LinkStats;

/// Per direction (`egress`, `ingress`), a count per name.
type PerDirection = BTreeMap<String, BTreeMap<String, u64>>;

/// One link's metrics: RTT, bytes, goodput, QUIC loss and congestion state,
/// and the shaper's traffic and drops by cause. Byte and packet counts are
/// cumulative since the link opened.
#[pyclass(module = "hypergpu._core", name = "LinkStats", frozen, get_all)]
#[derive(Clone, Debug)]
pub struct PyLinkStats {
    /// Seconds since the link opened.
    age_s: f64,
    /// QUIC's smoothed round-trip time.
    srtt_ms: f64,
    /// Recent round trips of this link's probes, oldest first.
    rtt_samples_ms: Vec<f64>,
    /// Application bytes (whole frames) sent and received.
    bytes_sent: u64,
    bytes_received: u64,
    messages_sent: u64,
    messages_received: u64,
    /// Application bits received (sent) per second of the link's life.
    goodput_bps: f64,
    send_goodput_bps: f64,
    /// Messages refused here as over the size limit.
    refused_too_large: u64,
    /// Messages the peer refused as too large after `send` had returned.
    refused_by_peer: u64,
    /// Streams sent and not yet acknowledged by the peer.
    unacked_messages: u64,
    udp_bytes_sent: u64,
    udp_bytes_received: u64,
    udp_datagrams_sent: u64,
    udp_datagrams_received: u64,
    /// QUIC packets sent and declared lost.
    sent_packets: u64,
    lost_packets: u64,
    lost_bytes: u64,
    congestion_events: u64,
    /// QUIC's congestion window, in bytes.
    cwnd: u64,
    mtu: u16,
    /// Datagrams the shaper dropped, per direction, per cause.
    shaper_drops: PerDirection,
    /// Datagrams and bytes through the shaper, per direction: `packets`,
    /// `bytes`, `delivered_packets`, `delivered_bytes`.
    shaper: PerDirection,
}

fn directions(
    f: impl Fn(&DirectionStats) -> BTreeMap<String, u64>,
    c: &LinkCounters,
) -> PerDirection {
    BTreeMap::from([
        ("egress".to_string(), f(&c.egress)),
        ("ingress".to_string(), f(&c.ingress)),
    ])
}

fn drops(s: &DirectionStats) -> BTreeMap<String, u64> {
    DropCause::ALL
        .iter()
        .map(|&cause| (cause.name().to_string(), s.drops[cause as usize]))
        .collect()
}

fn passed(s: &DirectionStats) -> BTreeMap<String, u64> {
    BTreeMap::from([
        ("packets".to_string(), s.packets),
        ("bytes".to_string(), s.bytes),
        ("delivered_packets".to_string(), s.delivered_packets),
        ("delivered_bytes".to_string(), s.delivered_bytes),
    ])
}

impl From<&LinkStats> for PyLinkStats {
    fn from(s: &LinkStats) -> Self {
        let age = s.age_s.max(1e-9);
        PyLinkStats {
            age_s: s.age_s,
            srtt_ms: s.srtt_ms,
            rtt_samples_ms: s.rtt_samples_ms.clone(),
            bytes_sent: s.app_bytes_sent,
            bytes_received: s.app_bytes_received,
            messages_sent: s.messages_sent,
            messages_received: s.messages_received,
            goodput_bps: s.app_bytes_received as f64 * 8.0 / age,
            send_goodput_bps: s.app_bytes_sent as f64 * 8.0 / age,
            refused_too_large: s.refused_too_large,
            refused_by_peer: s.refused_by_peer,
            unacked_messages: s.unacked_messages,
            udp_bytes_sent: s.udp_bytes_sent,
            udp_bytes_received: s.udp_bytes_received,
            udp_datagrams_sent: s.udp_datagrams_sent,
            udp_datagrams_received: s.udp_datagrams_received,
            sent_packets: s.sent_packets,
            lost_packets: s.lost_packets,
            lost_bytes: s.lost_bytes,
            congestion_events: s.congestion_events,
            cwnd: s.cwnd,
            mtu: s.mtu,
            shaper_drops: directions(drops, &s.shaper),
            shaper: directions(passed, &s.shaper),
        }
    }
}

#[pymethods]
impl PyLinkStats {
    /// Any field may be given; the rest are zero (for synthetic links in
    /// tests and replays).
    #[new]
    #[pyo3(signature = (*, age_s=0.0, srtt_ms=0.0, rtt_samples_ms=Vec::new(), bytes_sent=0,
        bytes_received=0, messages_sent=0, messages_received=0, goodput_bps=0.0,
        send_goodput_bps=0.0, refused_too_large=0, refused_by_peer=0, unacked_messages=0,
        udp_bytes_sent=0, udp_bytes_received=0, udp_datagrams_sent=0, udp_datagrams_received=0,
        sent_packets=0, lost_packets=0, lost_bytes=0, congestion_events=0, cwnd=0, mtu=0,
        shaper_drops=None, shaper=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        age_s: f64,
        srtt_ms: f64,
        rtt_samples_ms: Vec<f64>,
        bytes_sent: u64,
        bytes_received: u64,
        messages_sent: u64,
        messages_received: u64,
        goodput_bps: f64,
        send_goodput_bps: f64,
        refused_too_large: u64,
        refused_by_peer: u64,
        unacked_messages: u64,
        udp_bytes_sent: u64,
        udp_bytes_received: u64,
        udp_datagrams_sent: u64,
        udp_datagrams_received: u64,
        sent_packets: u64,
        lost_packets: u64,
        lost_bytes: u64,
        congestion_events: u64,
        cwnd: u64,
        mtu: u16,
        shaper_drops: Option<PerDirection>,
        shaper: Option<PerDirection>,
    ) -> Self {
        let zero = LinkCounters::default();
        PyLinkStats {
            age_s,
            srtt_ms,
            rtt_samples_ms,
            bytes_sent,
            bytes_received,
            messages_sent,
            messages_received,
            goodput_bps,
            send_goodput_bps,
            refused_too_large,
            refused_by_peer,
            unacked_messages,
            udp_bytes_sent,
            udp_bytes_received,
            udp_datagrams_sent,
            udp_datagrams_received,
            sent_packets,
            lost_packets,
            lost_bytes,
            congestion_events,
            cwnd,
            mtu,
            shaper_drops: shaper_drops.unwrap_or_else(|| directions(drops, &zero)),
            shaper: shaper.unwrap_or_else(|| directions(passed, &zero)),
        }
    }

    /// Every field as plain Python values (for JSON).
    fn as_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("age_s", self.age_s)?;
        d.set_item("srtt_ms", self.srtt_ms)?;
        d.set_item("rtt_samples_ms", &self.rtt_samples_ms)?;
        d.set_item("bytes_sent", self.bytes_sent)?;
        d.set_item("bytes_received", self.bytes_received)?;
        d.set_item("messages_sent", self.messages_sent)?;
        d.set_item("messages_received", self.messages_received)?;
        d.set_item("goodput_bps", self.goodput_bps)?;
        d.set_item("send_goodput_bps", self.send_goodput_bps)?;
        d.set_item("refused_too_large", self.refused_too_large)?;
        d.set_item("refused_by_peer", self.refused_by_peer)?;
        d.set_item("unacked_messages", self.unacked_messages)?;
        d.set_item("udp_bytes_sent", self.udp_bytes_sent)?;
        d.set_item("udp_bytes_received", self.udp_bytes_received)?;
        d.set_item("udp_datagrams_sent", self.udp_datagrams_sent)?;
        d.set_item("udp_datagrams_received", self.udp_datagrams_received)?;
        d.set_item("sent_packets", self.sent_packets)?;
        d.set_item("lost_packets", self.lost_packets)?;
        d.set_item("lost_bytes", self.lost_bytes)?;
        d.set_item("congestion_events", self.congestion_events)?;
        d.set_item("cwnd", self.cwnd)?;
        d.set_item("mtu", self.mtu)?;
        d.set_item("shaper_drops", &self.shaper_drops)?;
        d.set_item("shaper", &self.shaper)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "LinkStats(srtt_ms={:.2}, sent_packets={}, lost_packets={}, bytes_sent={}, \
             bytes_received={}, goodput_bps={:.0})",
            self.srtt_ms,
            self.sent_packets,
            self.lost_packets,
            self.bytes_sent,
            self.bytes_received,
            self.goodput_bps
        )
    }
}
