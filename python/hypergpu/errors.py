"""The one exception hierarchy of HyperGPU.

Everything HyperGPU raises on purpose is a :class:`HyperGPUError`. Errors
from the Rust core (``hypergpu._core``) are raised as these classes (the
core imports each one by type and matches every error variant to one), so
``except hypergpu.errors.FrameError`` catches a malformed frame
whether it was found in Rust or in Python. Classes that describe bad input
also derive from :class:`ValueError`, and transport timeouts from the
builtin :class:`TimeoutError`, so generic handlers keep working.
"""

from __future__ import annotations

import builtins

__all__ = [
    "HyperGPUError",
    "ConfigError",
    "UpdateError",
    "EmptyInputError",
    "ShapeMismatchError",
    "DtypeMismatchError",
    "NonContiguousError",
    "WeightsError",
    "NonFiniteError",
    "InvalidArgumentError",
    "CodecError",
    "UnknownCodecError",
    "FrameError",
    "TruncatedFrameError",
    "BadMagicError",
    "UnsupportedVersionError",
    "ChecksumError",
    "TransportError",
    "AuthError",
    "TimeoutError",
    "MessageTooLargeError",
    "ConnectionClosedError",
    "ChainError",
    "ContractRevertError",
    "ChainUnavailableError",
    "RefusedError",
    "CheckpointError",
    "DataError",
    "UnknownNodeError",
    "StaleUpdateError",
    "ParamsOutOfSyncError",
    "ConflictError",
    "NotRunningError",
    "UnknownSessionError",
    "UnknownPresetError",
    "MissingExtraError",
    "LaunchError",
]


class HyperGPUError(Exception):
    """Base of every error HyperGPU raises on purpose."""


class ConfigError(HyperGPUError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


# --- updates handed to a kernel ---------------------------------------------


class UpdateError(HyperGPUError, ValueError):
    """An update (or list of updates) cannot be used as given."""


class EmptyInputError(UpdateError):
    """No updates (or an empty tensor) where at least one was needed."""


class ShapeMismatchError(UpdateError):
    """An update's shape differs from the others or from the model."""


class DtypeMismatchError(UpdateError):
    """An update's element type is unsupported or differs from the others."""


class NonContiguousError(UpdateError):
    """An array is not C-contiguous, so it cannot be borrowed without a copy."""


class WeightsError(UpdateError):
    """Aggregation weights of the wrong length, negative, or all zero."""


class NonFiniteError(UpdateError):
    """An update holds NaN or infinity.

    ``update_index`` names the offending update in the list that was passed.
    """

    def __init__(self, message: str, update_index: int | None = None):
        super().__init__(message)
        self.update_index = update_index


class InvalidArgumentError(HyperGPUError, ValueError):
    """A parameter of a call is out of its allowed range."""


# --- codecs -----------------------------------------------------------------


class CodecError(HyperGPUError, ValueError):
    """An encoded payload cannot be decoded, or codec parameters are invalid."""


class UnknownCodecError(CodecError):
    """The codec named (or the codec id in a frame) is not known."""


# --- wire frames ------------------------------------------------------------


class FrameError(HyperGPUError, ValueError):
    """A wire frame is malformed."""


class TruncatedFrameError(FrameError):
    """A frame ends before its header or payload does."""


class BadMagicError(FrameError):
    """The bytes do not start with HyperGPU's frame magic."""


class UnsupportedVersionError(FrameError):
    """The frame was written by an incompatible protocol version."""


class ChecksumError(FrameError):
    """The payload does not hash to the checksum in the header."""


# --- transport ----------------------------------------------------------------


class TransportError(HyperGPUError, ConnectionError):
    """A link failed: connection refused, reset or closed."""


class AuthError(TransportError):
    """A join token or certificate fingerprint did not match."""


class TimeoutError(TransportError, builtins.TimeoutError):  # noqa: A001 - deliberate
    """A peer did not answer within the configured time."""


class MessageTooLargeError(TransportError):
    """A message exceeds the configured size limit and was refused unread."""


class ConnectionClosedError(TransportError):
    """The connection was closed, by the peer or locally."""


# --- everything above the core ------------------------------------------------


class ChainError(HyperGPUError):
    """A chain call failed or a transaction reverted."""


class ContractRevertError(ChainError):
    """A contract call reverted; ``error_name``/``error_args`` decode its custom error."""

    def __init__(self, message: str, error_name: str | None = None, error_args: dict | None = None):
        super().__init__(message)
        self.error_name = error_name
        self.error_args = error_args or {}


class ChainUnavailableError(ChainError, ConnectionError):
    """The chain's RPC endpoint could not be reached, even after retries."""


class RefusedError(HyperGPUError):
    """The coordinator will not take this node (e.g. the run already has ``coordinator.max_nodes``)."""


class CheckpointError(HyperGPUError):
    """A checkpoint is missing, corrupt or incompatible."""


class DataError(HyperGPUError, ValueError):
    """A dataset file, shard or data cache entry is missing, malformed or tampered with."""


class UnknownNodeError(HyperGPUError, KeyError):
    """A message or request names a node the coordinator does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class StaleUpdateError(UpdateError):
    """An update is for a round other than the one being aggregated."""


class ParamsOutOfSyncError(UpdateError):
    """A parameter delta is against a state this node does not hold; it needs the whole vector."""


# --- the control plane ----------------------------------------------------------


class ConflictError(HyperGPUError):
    """The request does not fit the service's state (e.g. start while running)."""


class NotRunningError(ConflictError):
    """There is no run to act on."""


class UnknownSessionError(HyperGPUError, LookupError):
    """No training session has this id."""


class UnknownPresetError(HyperGPUError, LookupError):
    """No saved configuration preset has this name."""


# --- packaging --------------------------------------------------------------------


class MissingExtraError(HyperGPUError, ImportError):
    """An optional part of HyperGPU was used without the extra that installs it;
    the message names the ``pip install 'hypergpu[extra]'`` to run."""

    def __init__(self, message: str, extra: str, missing: tuple[str, ...]):
        super().__init__(message, name=missing[0] if missing else None)
        self.extra = extra
        self.missing = missing


# --- launching node processes ----------------------------------------------------


class LaunchError(HyperGPUError):
    """The run's node processes could not be started (e.g. a Ray cluster could not place them)."""
