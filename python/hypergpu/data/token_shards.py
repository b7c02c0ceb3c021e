"""A corpus's shards as nodes see them: where each lies, how to read it, its samples.

:class:`TokenShardInfo` names a contiguous slice of a corpus's token file
and the sha256 of its bytes; :func:`read_shard` reads exactly that byte range
from a ``file://`` or ``http(s)://`` URL and checks it; :class:`TokenWindows`
turns tokens into language-model samples (a block of inputs and the same
block shifted by one as targets).
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from hypergpu.errors import DataError

#: URL schemes nodes read shards from.
SCHEMES = ("file", "http", "https")
_HTTP_TIMEOUT_S = 60.0
#: Hash and scan big token files in pieces, so memory stays flat.
CHUNK_TOKENS = 1 << 24


@dataclass(frozen=True)
class TokenShardInfo:
    """One contiguous slice ``[start, stop)`` of a corpus's token file."""

    index: int
    start: int
    stop: int
    checksum: str  # sha256 hex of the slice's bytes as stored
    samples: int  # language-model windows: (stop - start - 1) // block_size
    block_size: int

    def __len__(self) -> int:
        return self.samples

    def byte_range(self, itemsize: int) -> tuple[int, int]:
        """(offset, length) in bytes of the shard in the token file."""
        if itemsize not in (1, 2, 4):
            raise DataError(f"shard {self.index}: tokens are 1, 2 or 4 bytes, not {itemsize}")
        return self.start * itemsize, (self.stop - self.start) * itemsize

    def as_meta(self) -> dict[str, int | str]:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: Mapping[str, object]) -> TokenShardInfo:
        """The shard described by ``meta`` (from a peer), checked field by field."""
        if not isinstance(meta, Mapping):
            raise DataError(f"shard meta must be a mapping, got {type(meta).__name__}")
        fields = ("index", "start", "stop", "checksum", "samples", "block_size")
        missing = [k for k in fields if k not in meta]
        extra = sorted(set(meta) - set(fields))
        if missing or extra:
            raise DataError(f"shard meta: missing {missing}, unknown {extra}")
        ints: dict[str, int] = {}
        for k in ("index", "start", "stop", "samples", "block_size"):
            v = meta[k]
            if not isinstance(v, int) or isinstance(v, bool):  # bool is an int; refuse it
                raise DataError(f"shard meta: {k} must be an integer, got {v!r}")
            ints[k] = v
        who = f"shard {ints['index']}"
        checksum = meta["checksum"]
        if not isinstance(checksum, str) or len(checksum) != 64 or not _is_hex(checksum):
            raise DataError(f"{who}: checksum must be 64 lowercase hex digits, got {checksum!r}")
        if ints["index"] < 0 or ints["start"] < 0 or ints["block_size"] < 1:
            raise DataError(f"{who}: index and start must be >= 0 and block_size >= 1: {dict(meta)}")
        expected = (ints["stop"] - ints["start"] - 1) // ints["block_size"]
        if ints["stop"] <= ints["start"] or expected < 1 or ints["samples"] != expected:
            raise DataError(
                f"{who}: tokens {ints['start']}..{ints['stop']} with block_size "
                f"{ints['block_size']} hold {max(expected, 0)} windows, not {ints['samples']}"
            )
        return cls(checksum=checksum, **ints)


def _is_hex(s: str) -> bool:
    return all(c in "0123456789abcdef" for c in s)


def read_shard(url: str, info: TokenShardInfo, dtype: np.dtype | type) -> np.ndarray:
    """Exactly the shard's tokens from ``url``, verified against its checksum (read-only)."""
    dt = np.dtype(dtype)
    if dt.kind != "u":
        raise DataError(f"shard {info.index}: tokens are unsigned integers, not {dt}")
    dt = dt.newbyteorder("<")
    offset, length = info.byte_range(dt.itemsize)
    where = f"shard {info.index} (tokens {info.start}..{info.stop}) from {url}"
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "file":
        data = _read_file(url, offset, length, where)
    elif scheme in ("http", "https"):
        data = _read_http(url, offset, length, where)
    else:
        raise DataError(f"{where}: unsupported URL scheme {scheme!r} (file, http or https)")
    if len(data) != length:
        raise DataError(f"{where}: short read, got {len(data)} of {length} bytes")
    digest = hashlib.sha256(data).hexdigest()
    if digest != info.checksum:
        raise DataError(
            f"{where}: checksum mismatch, expected {info.checksum[:16]}…, the bytes read hash to "
            f"{digest[:16]}… (a different or tampered file)"
        )
    return np.frombuffer(data, dtype=dt)  # over immutable bytes, so read-only


def _read_file(url: str, offset: int, length: int, where: str) -> bytes:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise DataError(f"{where}: file URLs must be local, not on host {parts.netloc!r}")
    path = urllib.request.url2pathname(parts.path)
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)
    except OSError as e:
        raise DataError(f"{where}: cannot read {path} ({e.strerror or e})") from e


def _read_http(url: str, offset: int, length: int, where: str) -> bytes:
    req = urllib.request.Request(url, headers={"Range": f"bytes={offset}-{offset + length - 1}"})
    try:
        with urllib.request.urlopen(req, timeout=_HTTP_TIMEOUT_S) as resp:
            if resp.status != 206:
                # The server sent the whole file (python -m http.server ignores
                # Range): skip to the shard instead of holding the file in memory.
                skipped = 0
                while skipped < offset:
                    piece = resp.read(min(offset - skipped, 1 << 20))
                    if not piece:
                        break
                    skipped += len(piece)
            return bytes(resp.read(length))
    except urllib.error.HTTPError as e:
        raise DataError(f"{where}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(f"{where}: cannot fetch it ({reason})") from e


def map_tokens(path: Path, dtype: np.dtype) -> np.ndarray:
    if path.stat().st_size == 0:  # numpy cannot map an empty file
        raise DataError(f"token file {path}: it is empty")
    return np.memmap(path, dtype=dtype, mode="r")


def tail_split(n: int, test_fraction: float, who: str) -> int:
    """Where the held-out tail of ``n`` tokens starts: at least one token each side."""
    split = n - max(1, int(n * test_fraction))
    if split < 1:
        raise DataError(f"{who}: {n} tokens are too few to hold any out")
    return split


def scan_tokens(tokens: np.ndarray) -> tuple[int, hashlib._Hash]:
    """(largest token, sha256 over the token bytes) in one pass over the file."""
    h = hashlib.sha256()
    top = 0
    for start in range(0, len(tokens), CHUNK_TOKENS):
        chunk = tokens[start : start + CHUNK_TOKENS]
        h.update(chunk.data)
        top = max(top, int(chunk.max()))
    return top, h


def fingerprint_of(content: hashlib._Hash, dtype: np.dtype, vocab_size: int) -> str:
    """sha256 over the token bytes, then the dtype name and vocab size.

    They follow the tokens rather than lead them, so a ``.bin``'s vocabulary
    can be found (largest token + 1) in the same pass that hashes it.
    """
    h = content.copy()
    h.update(f"\0{dtype.name}\0{vocab_size}".encode())
    return h.hexdigest()


def first_at_least(tokens: np.ndarray, limit: int) -> int:
    for start in range(0, len(tokens), CHUNK_TOKENS):
        hits = np.flatnonzero(tokens[start : start + CHUNK_TOKENS] >= limit)
        if hits.size:
            return start + int(hits[0])
    raise AssertionError("no token at or above the limit")  # only called after scan_tokens found one


class TokenWindows:
    """A token stream as language-model samples.

    Sample i is the ``block_size + 1`` tokens from ``i * block_size``: its
    inputs are the first ``block_size`` of them, its targets the same shifted by one.
    """

    def __init__(self, tokens: np.ndarray, block_size: int):
        if tokens.ndim != 1 or tokens.dtype.kind not in "ui":
            raise DataError(
                f"tokens must be a 1-D integer array, got {tokens.dtype} of shape {tokens.shape}"
            )
        if block_size < 1:
            raise DataError(f"block_size must be at least 1, got {block_size}")
        if len(tokens) < block_size + 1:
            raise DataError(
                f"{len(tokens)} tokens are too few for one window of block_size {block_size} "
                f"(it needs {block_size + 1})"
            )
        self.tokens = tokens
        self.block_size = block_size
        self._len = (len(tokens) - 1) // block_size
        self._offsets = np.arange(block_size + 1, dtype=np.int64)

    def __len__(self) -> int:
        return self._len

    def batch(self, idx: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """int64 inputs and targets, each (len(idx), block_size)."""
        if isinstance(idx, torch.Tensor):
            idx = idx.detach().cpu().numpy()
        idx = np.asarray(idx)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "ui"):
            raise DataError(
                f"sample indices must be a 1-D integer array, got {idx.dtype} of shape {idx.shape}"
            )
        if idx.size and (idx.min() < 0 or idx.max() >= self._len):
            raise DataError(f"sample indices {idx.min()}..{idx.max()} are outside 0..{self._len - 1}")
        starts = idx.astype(np.int64) * self.block_size
        # One gather over the memmap for the whole batch: only these pages are read.
        windows = np.asarray(self.tokens[starts[:, None] + self._offsets]).astype(np.int64)
        return torch.from_numpy(windows[:, :-1].copy()), torch.from_numpy(windows[:, 1:].copy())
