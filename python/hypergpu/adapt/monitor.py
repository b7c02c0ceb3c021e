"""Per-node link measurements: RTT, loss, reliability, throughput, trend.

Two sources feed it: the transport's own counters for each link (QUIC's
smoothed RTT and RTT samples, lost and sent packets, congestion window),
polled before every round, and the round records (how long each exchange
took end to end, how much compute it held, whether the node answered at
all). From them each node gets a score and a quality class (with
hysteresis), an estimate of how long an exchange would take, and a
bounded time series for the dashboard. Degradation and silence raise
alerts.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypergpu._core import LinkStats, TransportConfig
from hypergpu.adapt.quality import Quality, QualityTracker, link_score

#: Typical QUIC payload per packet, for the loss-limited throughput estimate.
MSS_BYTES = 1400
RECENT_RTT_SAMPLES = 8
#: The loss assumed for a link before any exchange has measured its throughput.
UNKNOWN_LOSS = 0.005
#: From this share of packets lost, loss (not the last measurement) bounds what a link can carry.
LOSSY = 0.005
#: Whether loss bounds what a link carries: it does under a loss-based congestion controller
#: (Cubic, NewReno: ~MSS/RTT x 1.22/sqrt(loss)), not under BBR, which paces at its estimate of the
#: bottleneck through loss — and loses a few percent of packets itself, probing a shallow queue (a
#: 5 Mbit/s node read 7 % and was estimated at 0.46 Mbit/s by that bound). This is the transport's
#: default; the planner takes the run's ``network.congestion``, which a local run's nodes send with too.
LOSS_LIMITED = TransportConfig().congestion != "bbr"
Publish = Callable[..., Any]


def _ewma(old: float | None, new: float, alpha: float) -> float:
    return new if old is None else (1 - alpha) * old + alpha * new


def _carried(link: NodeLink, nbytes: int, seconds: float) -> None:
    """``nbytes`` crossed the link in ``seconds`` (one RTT of it the ack's way back)."""
    carried = nbytes / max(seconds - (link.rtt_ms or 0.0) / 1000.0, 1e-3)
    link.throughput_Bps = _ewma(link.throughput_Bps, carried, 0.5)
    link.throughput_rtt_ms = link.rtt_ms
    link.throughput_loss = link.loss


@dataclass
class NodeLink:
    """Everything known about one node's link."""

    node_id: int
    tracker: QualityTracker
    history: deque[dict[str, Any]]
    alpha: float = 0.3
    loss_limited: bool = LOSS_LIMITED  # see LOSS_LIMITED
    srtt_ms: float | None = None
    rtt_ms: float | None = None  # median of the latest RTT samples: robust to one slow ack
    throughput_rtt_ms: float | None = None  # the RTT when throughput_Bps was measured
    throughput_loss: float = 0.0  # the loss when throughput_Bps was measured
    jitter_ms: float = 0.0
    loss: float = 0.0  # share of packets lost, smoothed
    retransmits: int = 0  # packets the transport had to resend, cumulative
    cwnd: int | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    goodput_bps: float | None = None
    turnaround_s: float | None = None  # params out -> update in, smoothed
    compute_s: float | None = None
    wall_s: float | None = None
    sample_s: float | None = None  # compute per training sample
    throughput_Bps: float | None = None  # bytes/s measured over whole exchanges
    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=20))
    exchanges: int = 0  # completed exchanges seen
    missed_streak: int = 0
    score: float | None = None
    rtt_recent: deque[float] = field(default_factory=lambda: deque(maxlen=16))
    _last_sent_packets: int = 0
    _last_lost_packets: int = 0

    @property
    def quality(self) -> Quality:
        return self.tracker.current or Quality.FAIR

    @property
    def reliability(self) -> float:
        """Share of recent exchanges that completed (1.0 before any)."""
        return sum(self.outcomes) / len(self.outcomes) if self.outcomes else 1.0

    @property
    def trend(self) -> float:
        """Relative RTT change, newest half against oldest half (+0.5: 50 % slower)."""
        values = list(self.rtt_recent)
        if len(values) < 4:
            return 0.0
        half = len(values) // 2
        old, new = statistics.fmean(values[:half]), statistics.fmean(values[half:])
        return (new - old) / old if old > 0 else 0.0

    def est_throughput_Bps(self) -> float:
        """Bytes/s one exchange can expect.

        Measured over past exchanges when known, scaled by how the RTT and the
        loss moved since (loss-limited throughput goes as 1/RTT and as
        1/sqrt(loss), the TCP-style MSS/RTT * 1.22/sqrt(loss)), and capped
        near that estimate once a link clean when measured loses ``LOSSY`` or
        more; before any exchange the estimate alone serves (taking at least
        ``UNKNOWN_LOSS`` while the loss is unknown). What a link carried
        already holds the loss it had then: a bottleneck's queue drops
        packets whenever a transfer fills it (a 100 Mbit/s link under a
        shaper loses several percent this way), and capping the measure by
        that loss again would count it twice. Under BBR (``loss_limited``
        false) loss moves neither the guess nor a measure.
        """
        rtt = max((self.rtt_ms or 50.0) / 1000.0, 1e-3)
        if self.throughput_Bps is None:
            # A guess until an upload measures the link; under BBR a loss read now is mostly its
            # own probing, and bounds nothing.
            loss = max(self.loss, UNKNOWN_LOSS) if self.loss_limited else UNKNOWN_LOSS
            return MSS_BYTES / rtt * 1.22 / math.sqrt(loss)
        measured = self.throughput_Bps
        if self.throughput_rtt_ms and self.rtt_ms:
            measured *= min(4.0, max(0.05, self.throughput_rtt_ms / self.rtt_ms))
        if not self.loss_limited or self.loss < LOSSY or self.loss <= self.throughput_loss:
            return measured
        if self.throughput_loss < LOSSY:
            # A clean link that turned lossy since its last exchange is capped by its new loss.
            return min(measured, 2.0 * MSS_BYTES / rtt * 1.22 / math.sqrt(self.loss))
        # A lossy link that lost more since carries less, as the loss bound scales.
        return measured * math.sqrt(self.throughput_loss / self.loss)

    def transfer_s(self, nbytes: float) -> float:
        return (self.rtt_ms or 50.0) / 1000.0 + nbytes / self.est_throughput_Bps()


class NetworkMonitor:
    """Link state of every node, fed by transport stats and round records."""

    def __init__(
        self,
        *,
        history: int = 500,
        margin: float = 5.0,
        dwell: int = 2,
        publish: Publish | None = None,
        silent_rounds: int = 2,
        loss_limited: bool = LOSS_LIMITED,
    ):
        self.history = history
        self.loss_limited = loss_limited
        self.margin = margin
        self.dwell = dwell
        self.publish = publish
        self.silent_rounds = silent_rounds
        self.links: dict[int, NodeLink] = {}

    def link(self, node_id: int) -> NodeLink:
        link = self.links.get(node_id)
        if link is None:
            link = NodeLink(node_id, QualityTracker(self.margin, self.dwell), deque(maxlen=self.history),
                            loss_limited=self.loss_limited)
            self.links[node_id] = link
        return link

    # --- inputs -------------------------------------------------------------------

    def observe_stats(self, node_id: int, stats: LinkStats) -> NodeLink:
        """Fold in the transport's counters for this link (cumulative figures)."""
        link = self.link(node_id)
        srtt = stats.srtt_ms
        if isinstance(srtt, (int, float)) and srtt > 0:
            link.srtt_ms = float(srtt)
            link.rtt_recent.append(float(srtt))
        samples = [float(s) for s in stats.rtt_samples_ms if s > 0]
        # The larger of QUIC's smoothed RTT (from acks of real traffic) and the
        # median of the last few ping round trips: a link that just got worse
        # shows within seconds in one or the other.
        recent = statistics.median(samples[-RECENT_RTT_SAMPLES:]) if samples else None
        candidates = [v for v in (link.srtt_ms, recent) if v is not None]
        if candidates:
            link.rtt_ms = max(candidates)
        if len(samples) >= 2:
            link.jitter_ms = statistics.pstdev(samples[-32:])
        sent, lost = stats.sent_packets, stats.lost_packets
        d_sent, d_lost = sent - link._last_sent_packets, lost - link._last_lost_packets
        if d_sent >= 20:  # too few packets say nothing about the loss rate
            link.loss = _ewma(link.loss if link._last_sent_packets else None, d_lost / d_sent, link.alpha)
            link._last_sent_packets, link._last_lost_packets = sent, lost
        link.retransmits = lost
        link.cwnd = stats.cwnd
        link.bytes_sent = stats.bytes_sent
        link.bytes_received = stats.bytes_received
        link.goodput_bps = stats.goodput_bps
        return link

    def observe_upload(self, node_id: int, seconds: float | None, nbytes: int | None) -> None:
        """The node's own measure of one upload (send -> ack of its receipt): what its link
        carries, whether the update came on time or late (a node whose updates all come late
        would otherwise be judged by the guess alone, and never asked on time again)."""
        if seconds and nbytes and seconds > 0:
            _carried(self.link(node_id), nbytes, seconds)

    def observe_exchange(
        self, node_id: int, *, round_id: int, ok: bool, turnaround_s: float | None = None,
        compute_s: float | None = None, wall_s: float | None = None, samples: int | None = None,
        bytes_moved: int | None = None, upload: tuple[float, int | None] | None = None,
    ) -> NodeLink:
        """One round's outcome for a node that was asked to take part.

        ``upload``: the node's own measure of its previous upload (seconds from send to the
        ack of its receipt, bytes); when given it is the link's throughput, since with
        overlap the coordinator's turnaround also holds the node's next compute."""
        link = self.link(node_id)
        before = link.quality
        link.outcomes.append(ok)
        if ok:
            link.missed_streak = 0
            link.exchanges += 1
            a = link.alpha
            if turnaround_s is not None:
                link.turnaround_s = _ewma(link.turnaround_s, turnaround_s, a)
            if compute_s is not None:
                link.compute_s = _ewma(link.compute_s, compute_s, a)
                if samples:
                    link.sample_s = _ewma(link.sample_s, compute_s / samples, a)
            if wall_s is not None:
                link.wall_s = _ewma(link.wall_s, wall_s, a)
            # A node's first exchange also holds its start-up (imports, building the
            # model, the first batches), which is no measure of its link.
            if upload is not None and upload[1] and upload[0] > 0:
                self.observe_upload(node_id, upload[0], upload[1])
            elif turnaround_s is not None and wall_s is not None and bytes_moved and link.exchanges > 1:
                _carried(link, bytes_moved, turnaround_s - wall_s)
        else:
            link.missed_streak += 1
            if link.missed_streak == self.silent_rounds:
                self._alert(node_id, "error", f"node {node_id} has not answered {link.missed_streak} rounds in a row")
        self._rescore(link, round_id)
        if link.quality.rank > before.rank and link.quality.rank >= Quality.POOR.rank:
            self._alert(node_id, "warning", f"node {node_id} link degraded: {before.value} -> {link.quality.value}")
        if link.quality is not before and self.publish is not None:
            self.publish("network", type="quality", node=node_id, round=round_id,
                         previous=before.value, quality=link.quality.value, score=link.score)
        return link

    def refresh(self, node_id: int, round_id: int) -> NodeLink:
        """Re-score after new transport stats (before a round)."""
        link = self.link(node_id)
        before = link.quality if link.tracker.current is not None else None
        self._rescore(link, round_id)
        if before is not None and link.quality.rank > before.rank and link.quality.rank >= Quality.POOR.rank:
            self._alert(node_id, "warning", f"node {node_id} link degraded: {before.value} -> {link.quality.value}")
        return link

    # --- outputs ------------------------------------------------------------------

    def snapshot(self) -> dict[int, dict[str, Any]]:
        """Current state of every link, for status pages."""
        return {
            n: {
                "quality": link.quality.value,
                "score": link.score,
                "srtt_ms": link.srtt_ms,
                "rtt_ms": link.rtt_ms,
                "jitter_ms": link.jitter_ms,
                "loss": link.loss,
                "retransmits": link.retransmits,
                "cwnd": link.cwnd,
                "reliability": link.reliability,
                "trend": link.trend,
                "turnaround_s": link.turnaround_s,
                "throughput_Bps": link.est_throughput_Bps(),
                "bytes_sent": link.bytes_sent,
                "bytes_received": link.bytes_received,
            }
            for n, link in sorted(self.links.items())
        }

    def series(self, node_id: int) -> list[dict[str, Any]]:
        """The node's bounded time series (one point per re-score)."""
        return list(self.link(node_id).history)

    # --- internals ----------------------------------------------------------------

    def _rescore(self, link: NodeLink, round_id: int) -> None:
        rtt = link.rtt_ms if link.rtt_ms is not None else 50.0
        loss = link.loss if link.loss_limited else None  # under BBR what loss costs shows in the throughput
        link.score = link_score(rtt + link.jitter_ms, loss, link.reliability, link.est_throughput_Bps() * 8)
        link.tracker.update(link.score)
        link.history.append({
            "t": time.time(), "round": round_id, "score": round(link.score, 2), "quality": link.quality.value,
            "srtt_ms": link.srtt_ms, "rtt_ms": link.rtt_ms, "loss": link.loss, "reliability": link.reliability,
            "turnaround_s": link.turnaround_s,
        })

    def _alert(self, node_id: int, level: str, message: str) -> None:
        if self.publish is not None:
            self.publish("alert", level=level, node=node_id, message=message)
