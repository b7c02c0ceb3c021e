"""``/metrics`` in the Prometheus text format, from a registry owned by the app.

Counters and the round-duration histogram are fed by the service after each
round; per-node figures are read from the coordinator at scrape time, so a
scrape always shows the registry as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hypergpu.api.service import TrainingService

if TYPE_CHECKING:
    from hypergpu.round import RoundRecord

ROUND_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
NODE_STATES = ("active", "suspect", "dead", "left")
#: (status key, gauge name, help) of the last evaluation's figures.
HELD_OUT_GAUGES = (
    ("test_accuracy", "hypergpu_test_accuracy_ratio", "Last evaluated test accuracy (a language model's: next token)"),
    ("test_loss", "hypergpu_test_loss", "Last evaluated held-out loss"),
    ("test_perplexity", "hypergpu_test_perplexity", "Last evaluated held-out perplexity (language models)"),
    ("test_bits_per_byte", "hypergpu_test_bits_per_byte", "Last evaluated held-out bits per byte (language models)"),
)


class NodeCollector(Collector):
    """Per-node and whole-run gauges read from the service when scraped."""

    def __init__(self, service: TrainingService):
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
        sent = CounterMetricFamily("hypergpu_node_bytes_sent", "Bytes the coordinator sent to a node", labels=["node"])
        received = CounterMetricFamily(
            "hypergpu_node_bytes_received", "Bytes the coordinator received from a node", labels=["node"]
        )
        quality = GaugeMetricFamily("hypergpu_node_quality_ratio", "Node health 0..1 (success rate, latency)",
                                    labels=["node"])
        rtt = GaugeMetricFamily("hypergpu_node_rtt_seconds", "Smoothed round-trip time of the node's link",
                                labels=["node"])
        utilisation = GaugeMetricFamily("hypergpu_node_utilisation_ratio",
                                        "A node's time training / the wall time its updates covered", labels=["node"])
        scored = CounterMetricFamily("hypergpu_node_effects_scored",
                                     "A node's updates scored by their effect on the held-out loss", labels=["node"])
        harmful = CounterMetricFamily("hypergpu_node_effects_harmful",
                                      "A node's scored updates that made the held-out loss worse beyond noise",
                                      labels=["node"])
        effect_mean = GaugeMetricFamily("hypergpu_node_effect_mean",
                                        "Mean effect of a node's scored updates: held-out loss before - after",
                                        labels=["node"])
        effect_last = GaugeMetricFamily("hypergpu_node_effect_last",
                                        "Effect of a node's latest scored update: held-out loss before - after",
                                        labels=["node"])
        states = GaugeMetricFamily("hypergpu_nodes", "Nodes by status", labels=["status"])
        counts = dict.fromkeys(NODE_STATES, 0)
        for node in service.nodes():
            label = [str(node["node_id"])]
            sent.add_metric(label, node["bytes_sent"])
            received.add_metric(label, node["bytes_received"])
            if node["quality"] is not None:
                quality.add_metric(label, node["quality"])
            if node["rtt_ms"] is not None:
                rtt.add_metric(label, node["rtt_ms"] / 1000.0)
            if node["utilisation"] is not None:
                utilisation.add_metric(label, node["utilisation"])
            _add_effects(node, label, scored, harmful, effect_mean, effect_last)
            counts[node["status"]] = counts.get(node["status"], 0) + 1
        for state, n in counts.items():
            states.add_metric([state], n)
        yield from (sent, received, quality, rtt, utilisation, scored, harmful, effect_mean, effect_last, states)

        status = service.status()
        yield GaugeMetricFamily("hypergpu_training_active", "1 while a run is in progress",
                                value=1 if service.running else 0)
        yield GaugeMetricFamily("hypergpu_round", "Last finished round of the current run", value=status["round"])
        # Held-out figures as the last evaluation gave them; a task's own ones only
        # (no perplexity for a classifier), so absent rather than zero.
        for key, name, help_text in HELD_OUT_GAUGES:
            if status[key] is not None:
                yield GaugeMetricFamily(name, help_text, value=status[key])
        depth = _chain_queue_depth(service.chain)
        if depth is not None:
            yield GaugeMetricFamily("hypergpu_chain_queue_depth", "Chain writes waiting to be sent", value=depth)


def _add_effects(node: dict[str, Any], label: list[str], scored: CounterMetricFamily, harmful: CounterMetricFamily,
                 mean: GaugeMetricFamily, last: GaugeMetricFamily) -> None:
    """A node's effect figures; a gauge with nothing measured yet (or a broken model's) is left out."""
    scored.add_metric(label, node.get("effects_scored", 0))
    harmful.add_metric(label, node.get("effects_harmful", 0))
    if node.get("effect_mean") is not None:
        mean.add_metric(label, node["effect_mean"])
    if node.get("effect_last") is not None:
        last.add_metric(label, node["effect_last"])


def _chain_queue_depth(chain: Any) -> int | None:
    if chain is None:
        return None
    value = chain.status().get("queue_depth")
    return int(value) if isinstance(value, (int, float)) else None


def build_registry(service: TrainingService) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    rounds = Counter("hypergpu_rounds", "Training rounds finished", ["applied"], registry=registry)
    samples = Counter("hypergpu_samples", "Training samples in applied updates", registry=registry)
    duration = Histogram("hypergpu_round_duration_seconds", "Wall time of a training round",
                         buckets=ROUND_BUCKETS, registry=registry)

    def on_round(record: RoundRecord) -> None:
        rounds.labels(applied=str(record.applied).lower()).inc()
        if record.applied:
            samples.inc(record.samples)
        duration.observe(record.duration_s)

    service.round_listeners.append(on_round)
    registry.register(NodeCollector(service))
    return registry
