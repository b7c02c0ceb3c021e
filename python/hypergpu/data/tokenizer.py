"""Turning source bytes into token ids, and back (for sampled text).

Two tokenizers: :class:`ByteTokenizer` (every byte is a token, 256 of them,
nothing to install) and :class:`VocabTokenizer`, a `tokenizers` vocabulary
file. The `tokenizers` library is imported only when a vocabulary file is
used, so byte-level corpora need nothing beyond numpy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hypergpu.errors import DataError
from hypergpu.extras import require

__all__ = ["ByteTokenizer", "Tokenizer", "VocabTokenizer", "load_tokenizer", "token_dtype"]

TokenIds = Sequence[int] | np.ndarray


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned little-endian type that holds every id of the vocabulary."""
    if vocab_size < 1:
        raise DataError(f"vocab_size must be at least 1, got {vocab_size}")
    for dtype, limit in (("<u1", 2**8), ("<u2", 2**16), ("<u4", 2**32)):
        if vocab_size <= limit:
            return np.dtype(dtype)
    raise DataError(f"vocab_size {vocab_size} does not fit in 32-bit token ids")


class Tokenizer(Protocol):
    """What a corpus needs of a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def digest(self) -> str:
        """Identifies the vocabulary, so cached token files are rebuilt when it changes."""
        ...

    def encode(self, data: bytes) -> np.ndarray: ...

    def decode(self, tokens: TokenIds) -> str: ...


class ByteTokenizer:
    """Bytes are tokens: vocabulary 256, any input (text or not) round-trips exactly."""

    vocab_size = 256
    digest = "bytes"

    def encode(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8)

    def decode(self, tokens: TokenIds) -> str:
        ids = np.asarray(tokens)
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            raise DataError(f"byte tokens are 0..255, got ids from {ids.min()} to {ids.max()}")
        # Sampled bytes may end mid-character; show that rather than fail.
        return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


class VocabTokenizer:
    """A `tokenizers` JSON vocabulary (BPE, WordPiece, WordLevel, ...)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        require("lm")
        import tokenizers  # type: ignore[import-not-found, unused-ignore]

        try:
            raw = self.path.read_bytes()
        except OSError as e:
            raise DataError(f"tokenizer {self.path}: cannot read it ({e.strerror or e})") from e
        try:
            self._tok: Any = tokenizers.Tokenizer.from_str(raw.decode("utf-8"))
        except Exception as e:  # the library raises its own bare Exception on bad JSON
            raise DataError(f"tokenizer {self.path}: not a `tokenizers` vocabulary ({e})") from e
        # Hash the bytes we parsed, not a second read, so the digest matches the vocabulary.
        self.digest = hashlib.sha256(raw).hexdigest()
        self.vocab_size: int = self._tok.get_vocab_size(with_added_tokens=True)
        if self.vocab_size < 1:
            raise DataError(f"tokenizer {self.path}: the vocabulary is empty")
        self._dtype = token_dtype(self.vocab_size)

    def encode(self, data: bytes) -> np.ndarray:
        # Corpora hold arbitrary files: undecodable bytes become U+FFFD, not an error.
        text = data.decode("utf-8", errors="replace")
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return np.asarray(ids, dtype=self._dtype)

    def decode(self, tokens: TokenIds) -> str:
        return str(self._tok.decode([int(t) for t in np.asarray(tokens).ravel()]))


def load_tokenizer(path: Path | str | None) -> ByteTokenizer | VocabTokenizer:
    """The vocabulary file at ``path``, or byte-level tokens when it is unset."""
    return ByteTokenizer() if path is None else VocabTokenizer(path)
