"""The control plane's routes, one module per concern."""
