"""The optional parts of HyperGPU and the extras that install them.

The base package trains (torch, numpy, pydantic, safetensors, click, rich,
eth-account for the nodes' keys, and the extension); each other part checks for its extra where it is first
imported, with :func:`require`, so a missing one fails at once with the
command that fixes it instead of an ``ImportError`` from deep inside a run.
"""

from __future__ import annotations

from importlib.util import find_spec

from hypergpu.errors import MissingExtraError

__all__ = ["EXTRAS", "require", "installed"]

#: extra -> (what it enables, the top-level modules it installs that HyperGPU imports)
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    # (eth-account, and the eth-abi/eth-utils it brings, are in the base: every node signs its hello)
    "chain": ("on-chain contribution rewards (rewards.enabled)", ("web3", "eth_tester")),
    "api": ("the control plane and dashboard (train/demo without --no-api, serve)",
            ("fastapi", "uvicorn", "prometheus_client")),
    "data": ("the bundled digits dataset", ("sklearn",)),
    "lm": ("a tokenizers vocabulary file (data.tokenizer)", ("tokenizers",)),
    "tracking": ("round metrics to TensorBoard (tracking.backends)", ("tensorboard",)),
    "wandb": ("round metrics to Weights & Biases (tracking.backends)", ("wandb",)),
    "mlflow": ("round metrics to MLflow (tracking.backends)", ("mlflow",)),
    "ray": ("node processes on a Ray cluster (nodes.launcher = 'ray')", ("ray",)),
}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (found without importing it)."""
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken entry in sys.modules
        return False


def require(extra: str, modules: tuple[str, ...] | None = None) -> None:
    """Raises :class:`MissingExtraError` naming ``pip install 'hypergpu[extra]'``
    when any of the extra's modules (or ``modules``) is not installed."""
    feature, known = EXTRAS[extra]
    missing = tuple(m for m in (modules or known) if not installed(m))
    if missing:
        raise MissingExtraError(
            f"{feature} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            f"pip install 'hypergpu[{extra}]'",
            extra=extra,
            missing=missing,
        )
