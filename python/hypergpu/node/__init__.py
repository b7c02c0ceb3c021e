"""The node side: the built-in node process (``runtime``), a wrapped optimizer
for a user's own model and loop (``optimizer``), the protocol session both
use (``session``, ``background``), local training and the node's metrics."""
