"""The node side: local training on a shard and the node's own metrics."""
