"""Token corpora for causal language modelling.

A corpus is one file of little-endian unsigned tokens (uint8, uint16 or
uint32), memory-mapped read-only: it is never turned into float arrays and
never read whole into memory. Its first ``split`` tokens are for training,
the rest are held out. The training range is cut into contiguous shards,
each with a sha256 over its bytes, so a node can read its own shard by byte
range from a URL and prove that it got exactly the coordinator's tokens
(:mod:`hypergpu.data.token_shards`).

Text corpora (the Python standard library, or a directory of files) are
tokenized once into the cache and reused; a nanoGPT-style ``.bin`` of uint16
tokens is used where it lies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hypergpu.config.schema import DataConfig
from hypergpu.data.text_files import split_files, stdlib_root, stdlib_sources, text_sources
from hypergpu.data.token_shards import SCHEMES, TokenShardInfo, TokenWindows, read_shard  # re-exported
from hypergpu.data.token_shards import fingerprint_of, first_at_least, map_tokens, scan_tokens, tail_split
from hypergpu.data.tokenizer import ByteTokenizer, VocabTokenizer, load_tokenizer, token_dtype
from hypergpu.errors import DataError

__all__ = ["Corpus", "TokenShardInfo", "TokenWindows", "check_fingerprint", "load_corpus", "read_shard",
           "shard_url", "split_files", "stdlib_root", "stdlib_sources", "text_sources"]

log = logging.getLogger(__name__)

#: Bumped whenever the layout of prepared token files changes, so old caches are not reused.
FORMAT_VERSION = 1
#: Follows every file's tokens, so a window that crosses files sees a paragraph break.
SEPARATOR = b"\n\n"


# --- the corpus ------------------------------------------------------------------


# eq=False: the token array would make == ambiguous, and identity is what matters.
@dataclass(frozen=True, eq=False)
class Corpus:
    """A token file on disk, memory-mapped, with its train / held-out split."""

    name: str  # "stdlib", "text" or "tokens"
    path: Path  # the token file
    dtype: np.dtype
    vocab_size: int
    tokens: np.ndarray  # read-only memmap over the whole file
    fingerprint: str
    split: int  # index of the first held-out token
    files: tuple[Path, ...]  # source files (the .bin itself for "tokens")
    source_bytes: int
    train_files: tuple[Path, ...] = ()
    heldout_files: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.split < len(self.tokens):
            raise DataError(
                f"{self.name} corpus {self.path}: split {self.split} of {len(self.tokens)} tokens "
                "leaves no training or no held-out tokens"
            )

    @property
    def train(self) -> np.ndarray:
        """The training tokens (a view, nothing is read)."""
        return self.tokens[: self.split]

    @property
    def heldout(self) -> np.ndarray:
        """The held-out tokens (a view)."""
        return self.tokens[self.split :]

    def shards(self, count: int, block_size: int) -> list[TokenShardInfo]:
        """The training range cut into ``count`` contiguous, near-equal shards, in order."""
        if count < 1 or block_size < 1:
            raise DataError(
                f"{self.name} corpus: need count >= 1 and block_size >= 1, got {count}, {block_size}"
            )
        smallest = self.split // count
        if smallest < block_size + 1:
            raise DataError(
                f"{self.name} corpus: block_size {block_size} is longer than a shard of {smallest} "
                f"tokens ({self.split} training tokens in {count} shards; "
                f"a window needs {block_size + 1})"
            )
        bounds = [i * self.split // count for i in range(count + 1)]
        return [
            TokenShardInfo(
                index=i,
                start=a,
                stop=b,
                checksum=hashlib.sha256(self.tokens[a:b].data).hexdigest(),
                samples=(b - a - 1) // block_size,
                block_size=block_size,
            )
            for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))
        ]

    def describe(self) -> dict[str, Any]:
        """Figures for logs and the API (JSON-ready)."""
        return {
            "name": self.name,
            "files": len(self.files),
            "source_bytes": self.source_bytes,
            "tokens": len(self.tokens),
            "train_tokens": self.split,
            "heldout_tokens": len(self.tokens) - self.split,
            "vocab_size": self.vocab_size,
            "dtype": self.dtype.name,
            "fingerprint": self.fingerprint,
            "path": str(self.path),
        }


def load_corpus(cfg: DataConfig, *, vocab_size: int | None = None) -> Corpus:
    """The corpus ``cfg`` names, prepared into the cache on first use.

    ``vocab_size`` is the model's, when set. A vocabulary file must have
    exactly that many tokens; byte-level tokens need at least 256; a ``.bin``
    must hold no token at or above it. Unset, the corpus's own size is used
    (for a ``.bin``: its largest token + 1).
    """
    if cfg.dataset == "tokens":
        return _load_bin(cfg, vocab_size)
    if cfg.dataset == "stdlib":
        root = stdlib_root()
        files = stdlib_sources(root)
    elif cfg.dataset == "text":
        if cfg.path is None:
            raise DataError("text corpus: data.path must name a directory of text files")
        root = cfg.path
        files = text_sources(root)
    else:
        raise DataError(f"dataset {cfg.dataset!r} is not a token corpus (stdlib, text or tokens)")
    tok = load_tokenizer(cfg.tokenizer)
    _check_model_vocab(tok, vocab_size)
    cache = Path.home() / ".cache/hypergpu" if cfg.cache_dir is None else cfg.cache_dir
    return _prepared(cfg.dataset, root, files, tok, cfg.test_fraction, cache / "corpora")


def _check_model_vocab(tok: ByteTokenizer | VocabTokenizer, vocab_size: int | None) -> None:
    if vocab_size is None:
        return
    if isinstance(tok, VocabTokenizer) and vocab_size != tok.vocab_size:
        raise DataError(
            f"tokenizer {tok.path}: the model's vocab_size {vocab_size} does not match "
            f"the vocabulary's {tok.vocab_size} tokens"
        )
    if vocab_size < tok.vocab_size:
        raise DataError(f"the model's vocab_size {vocab_size} is below the byte-level vocabulary's 256")


def _prepared(
    name: str,
    root: Path,
    files: list[Path],
    tok: ByteTokenizer | VocabTokenizer,
    test_fraction: float,
    cache: Path,
) -> Corpus:
    by_rel = {p.relative_to(root).as_posix(): p for p in files}
    rels = list(by_rel)
    try:
        stats = [(rel, p.stat()) for rel, p in by_rel.items()]
    except OSError as e:
        raise DataError(f"{name} corpus: cannot stat {e.filename} ({e.strerror})") from e
    # Sizes and mtimes stand in for the content: hashing every file to find
    # the cache entry would cost as much as preparing it.
    key_src = {
        "version": FORMAT_VERSION,
        "dataset": name,
        "files": [[rel, st.st_size, st.st_mtime_ns] for rel, st in stats],
        "tokenizer": tok.digest,
        "test_fraction": test_fraction,
    }
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:24]
    token_path = cache / f"{name}-{key}.bin"
    meta_path = cache / f"{name}-{key}.json"
    dtype = token_dtype(tok.vocab_size)
    train_rels, held_rels = split_files(rels, test_fraction)

    meta = _cached_meta(token_path, meta_path, dtype, tok.vocab_size)
    if meta is None:
        meta = _write_tokens(
            name, by_rel, train_rels, held_rels, tok, dtype, test_fraction, token_path, meta_path
        )
    return Corpus(
        name=name,
        path=token_path,
        dtype=dtype,
        vocab_size=tok.vocab_size,
        tokens=map_tokens(token_path, dtype),
        fingerprint=meta["fingerprint"],
        split=meta["split"],
        files=tuple(files),
        source_bytes=meta["source_bytes"],
        train_files=tuple(by_rel[r] for r in train_rels),
        heldout_files=tuple(by_rel[r] for r in held_rels),
    )


def _cached_meta(
    token_path: Path, meta_path: Path, dtype: np.dtype, vocab_size: int
) -> dict[str, Any] | None:
    """The metadata of a prepared token file, if it is there and intact."""
    try:
        meta = json.loads(meta_path.read_text())
        if token_path.stat().st_size != meta["tokens"] * dtype.itemsize:
            return None
        top, content = scan_tokens(map_tokens(token_path, dtype))
        if fingerprint_of(content, dtype, vocab_size) != meta["fingerprint"] or top >= vocab_size:
            log.warning("cached corpus %s does not match its metadata; preparing it again", token_path)
            return None
        return dict(meta)
    except (OSError, ValueError, KeyError, TypeError, DataError):
        return None


def _write_tokens(
    name: str,
    by_rel: dict[str, Path],
    train_rels: list[str],
    held_rels: list[str],
    tok: ByteTokenizer | VocabTokenizer,
    dtype: np.dtype,
    test_fraction: float,
    token_path: Path,
    meta_path: Path,
) -> dict[str, Any]:
    # One pass writes, counts and splits the tokens; cut up, it would hand that state around.
    t0 = time.perf_counter()
    cache = token_path.parent
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{name} corpus: cannot create the cache {cache} ({e.strerror})") from e
    sep = tok.encode(SEPARATOR).astype(dtype)
    count = source_bytes = 0

    def write(out: Any, rel: str) -> None:
        nonlocal count, source_bytes
        path = by_rel[rel]
        try:
            data = path.read_bytes()
        except OSError as e:
            raise DataError(f"{name} corpus: cannot read {path} ({e.strerror})") from e
        ids = tok.encode(data).astype(dtype, copy=False)
        for part in (ids, sep):
            out.write(part.data)
            count += len(part)
        source_bytes += len(data)

    # Written under a temporary name and renamed, so a reader (or a second
    # process preparing the same corpus) never sees a half-written file.
    with _atomic(token_path) as out:
        for rel in train_rels:
            write(out, rel)
        split = count
        for rel in held_rels:
            write(out, rel)
    if count == 0:
        raise DataError(f"{name} corpus: the tokenizer produced no tokens from {len(by_rel)} files")
    if not held_rels:  # one file: hold out its tail, as for a .bin
        split = tail_split(count, test_fraction, f"{name} corpus {by_rel[train_rels[0]]}")
    top, content = scan_tokens(map_tokens(token_path, dtype))
    if top >= tok.vocab_size:
        raise DataError(
            f"{name} corpus: the tokenizer produced id {top}, outside its {tok.vocab_size} tokens"
        )
    meta = {
        "version": FORMAT_VERSION,
        "tokens": count,
        "split": split,
        "fingerprint": fingerprint_of(content, dtype, tok.vocab_size),
        "source_bytes": source_bytes,
    }
    with _atomic(meta_path) as out:
        out.write(json.dumps(meta, indent=1).encode())
    log.info(
        "prepared the %s corpus: %d files, %d bytes -> %d tokens in %.2f s (%s)",
        name, len(by_rel), source_bytes, count, time.perf_counter() - t0, token_path,
    )
    return meta


class _atomic:
    """Write a file under a temporary name; rename it into place only on success."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> Any:
        parent, name = self.path.parent, self.path.name
        fd, self.tmp = tempfile.mkstemp(dir=parent, prefix=f".{name}.", suffix=".tmp")
        self.out = os.fdopen(fd, "wb")
        return self.out

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.out.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)


def _load_bin(cfg: DataConfig, vocab_size: int | None) -> Corpus:
    path = cfg.path
    if path is None:
        raise DataError("tokens corpus: data.path must name a .bin file of uint16 tokens")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"token file {path}: cannot read it ({e.strerror})") from e
    if not path.is_file():
        raise DataError(f"token file {path}: not a regular file")
    if size % 2:
        raise DataError(
            f"token file {path}: its length {size} bytes is odd; uint16 tokens take 2 bytes each"
        )
    if cfg.tokenizer is not None:  # the vocabulary the .bin was made with
        tok = VocabTokenizer(cfg.tokenizer)
        _check_model_vocab(tok, vocab_size)
        vocab_size = tok.vocab_size
    dtype = np.dtype("<u2")
    tokens = map_tokens(path, dtype)
    top, content = scan_tokens(tokens)
    if vocab_size is not None and top >= vocab_size:
        pos = first_at_least(tokens, vocab_size)
        raise DataError(
            f"token file {path}: token {int(tokens[pos])} at position {pos} is outside the "
            f"vocabulary of {vocab_size} tokens"
        )
    vocab = vocab_size if vocab_size is not None else top + 1
    return Corpus(
        name="tokens",
        path=path,
        dtype=dtype,
        vocab_size=vocab,
        tokens=tokens,
        fingerprint=fingerprint_of(content, dtype, vocab),
        split=tail_split(len(tokens), cfg.test_fraction, f"token file {path}"),
        files=(path,),
        source_bytes=size,
        train_files=(path,),
    )


def check_fingerprint(expected: str, corpus: Corpus, who: str) -> None:
    """Refuse to train on a corpus other than the coordinator's."""
    if expected != corpus.fingerprint:
        raise DataError(
            f"{who}: corpus fingerprint mismatch: this node's {corpus.name} corpus hashes to "
            f"{corpus.fingerprint[:12]}…, the coordinator's to {expected[:12]}… "
            "(a different Python version or different files)"
        )


# --- reading shards by URL --------------------------------------------------------


def shard_url(template: str | None, corpus: Corpus) -> str:
    """Where nodes read ``corpus``'s shards.

    ``template`` with ``{file}`` (the token file's name) and ``{fingerprint}``
    filled in; unset, the token file itself.
    """
    if template is None:
        return corpus.path.resolve().as_uri()
    url = template.replace("{file}", urllib.parse.quote(corpus.path.name))
    url = url.replace("{fingerprint}", corpus.fingerprint)
    if urllib.parse.urlsplit(url).scheme.lower() not in SCHEMES:
        raise DataError(f"source_url {template!r}: only file://, http:// and https:// URLs are read")
    return url
