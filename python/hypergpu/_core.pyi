# Type stubs for the compiled extension hypergpu._core.
# Kept honest by `python -m mypy.stubtest hypergpu._core` in `make test`.

from collections.abc import Buffer, Sequence

__version__: str

# ---- wire -------------------------------------------------------------------

FRAME_VERSION: int
HEADER_FIXED_LEN: int

class TensorSpec:
    name: str
    dtype: str
    shape: list[int]
    nbytes: int
    def __new__(cls, name: str, dtype: str, shape: Sequence[int], nbytes: int) -> TensorSpec: ...

class FrameHeader:
    kind: str
    codec: str
    zstd: bool
    round: int
    node_id: int
    tensors: list[TensorSpec]
    payload_len: int
    payload_crc: int
    header_len: int

def encode_frame(
    kind: str,
    payload: Buffer,
    *,
    round: int = 0,
    node_id: int = 0,
    codec: str = "raw",
    zstd: bool = False,
    tensors: Sequence[TensorSpec] = ...,
) -> bytes: ...
def decode_frame(data: Buffer, max_payload: int = ...) -> tuple[FrameHeader, int]: ...
def frame_header_len(data: Buffer) -> int: ...

# ---- aggregate ----------------------------------------------------------------

# ---- compress -----------------------------------------------------------------

from typing import Any as _Any

import numpy as _np
import numpy.typing as _npt

COMPRESS_MAX_BLOCK_SIZE: int
COMPRESS_DEFAULT_ZSTD_LEVEL: int

def compress_encode(
    update: _Any,
    codec: str,
    *,
    block_size: int = 256,
    k: int | None = None,
    residual: _Any | None = None,
    zstd: bool = False,
    zstd_level: int = ...,
) -> bytes: ...
def compress_decode(
    payload: Buffer, codec: str, *, zstd: bool = False, numel: int | None = None
) -> _npt.NDArray[_np.float32]: ...
def compress_encoded_len(
    codec: str, numel: int, *, block_size: int = 256, k: int | None = None
) -> int: ...

# ---- transport ----------------------------------------------------------------
