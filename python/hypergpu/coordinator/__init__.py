"""The coordinator: membership, the round driver, the network script."""

from hypergpu.coordinator.coordinator import Coordinator, RoundObserver
from hypergpu.coordinator.registry import NodeInfo, NodeRegistry, NodeStatus
from hypergpu.coordinator.summary import Summary

__all__ = ["Coordinator", "NodeInfo", "NodeRegistry", "NodeStatus", "RoundObserver", "Summary"]
