"""Model updates: aggregating them and compressing them for the wire.

The work is done by the Rust core; these modules accept NumPy arrays and
CPU torch tensors and hand them over without copying.
"""
