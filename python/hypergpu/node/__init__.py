"""The node side: the built-in node process (``runtime``), a wrapped optimizer
for a user's own model and loop (``optimizer``, over ``background``), the
protocol handler both share (``protocol``: what each message means), the
link it runs over (``session``), local training and the node's metrics."""
