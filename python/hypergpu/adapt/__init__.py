"""Network-aware adaptation: per-node link monitoring and the adaptive planner.

:class:`AdaptivePlanner` implements the coordinator's planner protocol:
before each round it reads every node's link and decides who takes part
and, per node, the batch split, local steps and update codec.
"""

from hypergpu.adapt.monitor import NetworkMonitor, NodeLink
from hypergpu.adapt.orchestrator import AdaptivePlanner
from hypergpu.adapt.quality import Quality, QualityTracker, link_score

__all__ = ["AdaptivePlanner", "NetworkMonitor", "NodeLink", "Quality", "QualityTracker", "link_score"]
