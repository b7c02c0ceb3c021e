"""Token corpora for causal language modelling.

A corpus is one file of little-endian unsigned tokens (uint8, uint16 or
uint32), memory-mapped read-only: it is never turned into float arrays and
never read whole into memory. Its first ``split`` tokens are for training,
the rest are held out. The training range is cut into contiguous shards,
each with a sha256 over its bytes, so a node can read its own shard by byte
range from a URL (``file://``, ``http(s)://``) and prove that it got exactly
the coordinator's tokens.

Text corpora (the Python standard library, or a directory of files) are
tokenized once into the cache and reused; a nanoGPT-style ``.bin`` of uint16
tokens is used where it lies.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import sysconfig
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hypergpu.config.schema import DataConfig
from hypergpu.data.tokenizer import ByteTokenizer, VocabTokenizer, load_tokenizer, token_dtype
from hypergpu.errors import DataError

__all__ = [
    "Corpus",
    "TokenShardInfo",
    "TokenWindows",
    "check_fingerprint",
    "load_corpus",
    "read_shard",
    "shard_url",
    "split_files",
    "stdlib_root",
    "stdlib_sources",
    "text_sources",
]

log = logging.getLogger(__name__)

#: Bumped whenever the layout of prepared token files changes, so old caches are not reused.
FORMAT_VERSION = 1
#: Follows every file's tokens, so a window that crosses files sees a paragraph break.
SEPARATOR = b"\n\n"
_STDLIB_SKIP = frozenset({"site-packages", "dist-packages", "__pycache__"})
_SCHEMES = ("file", "http", "https")
_CHUNK_TOKENS = 1 << 24  # hash and scan big files in pieces, so memory stays flat
_HTTP_TIMEOUT_S = 60.0


# --- sources -------------------------------------------------------------------


def stdlib_root() -> Path:
    """The standard library of the running Python."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources(root: Path) -> list[Path]:
    """Every ``*.py`` under ``root`` except installed packages and bytecode caches."""
    if not root.is_dir():
        raise DataError(f"stdlib corpus: {root} is not a directory")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIP]
        found.extend(Path(dirpath, f) for f in filenames if f.endswith(".py"))
    return _sorted_files(root, found)


def text_sources(directory: Path) -> list[Path]:
    """Every regular file under ``directory``, hidden files and directories skipped."""
    if not directory.is_dir():
        raise DataError(f"text corpus {directory}: not a directory")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath, f) for f in filenames if not f.startswith("."))
    files = _sorted_files(directory, found)
    if not files:
        raise DataError(f"text corpus {directory}: the directory holds no files")
    return files


def _sorted_files(root: Path, paths: list[Path]) -> list[Path]:
    # Sorted by relative POSIX path so every machine lists the same order.
    regular = [p for p in paths if p.is_file()]
    return sorted(regular, key=lambda p: p.relative_to(root).as_posix())


def _held_out(rel_path: str, test_fraction: float) -> bool:
    # A hash of the name, not of the content or a random draw: every node and
    # every later run puts the same files on the same side.
    digest = hashlib.sha256(rel_path.encode("utf-8")).hexdigest()
    return int(digest[:8], 16) / 2**32 < test_fraction


def split_files(rel_paths: Sequence[str], test_fraction: float) -> tuple[list[str], list[str]]:
    """(training, held-out) relative paths, each in the given order.

    Tiny corpora may hash every file to one side: then the last file is held
    out, or the first kept for training. A one-file corpus keeps it for
    training (its tokens are split instead, see :func:`load_corpus`).
    """
    held = [r for r in rel_paths if _held_out(r, test_fraction)]
    if not held and rel_paths:
        held = [rel_paths[-1]]
    if len(held) == len(rel_paths):
        held = held[1:]
    held_set = set(held)
    return [r for r in rel_paths if r not in held_set], held


# --- shards --------------------------------------------------------------------


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
        tokens=_map(token_path, dtype),
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
        top, content = _scan(_map(token_path, dtype))
        if _fingerprint(content, dtype, vocab_size) != meta["fingerprint"] or top >= vocab_size:
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
        split = _tail_split(count, test_fraction, f"{name} corpus {by_rel[train_rels[0]]}")
    top, content = _scan(_map(token_path, dtype))
    if top >= tok.vocab_size:
        raise DataError(
            f"{name} corpus: the tokenizer produced id {top}, outside its {tok.vocab_size} tokens"
        )
    meta = {
        "version": FORMAT_VERSION,
        "tokens": count,
        "split": split,
        "fingerprint": _fingerprint(content, dtype, tok.vocab_size),
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
    tokens = _map(path, dtype)
    top, content = _scan(tokens)
    if vocab_size is not None and top >= vocab_size:
        pos = _first_at_least(tokens, vocab_size)
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
        fingerprint=_fingerprint(content, dtype, vocab),
        split=_tail_split(len(tokens), cfg.test_fraction, f"token file {path}"),
        files=(path,),
        source_bytes=size,
        train_files=(path,),
    )


def _map(path: Path, dtype: np.dtype) -> np.ndarray:
    if path.stat().st_size == 0:  # numpy cannot map an empty file
        raise DataError(f"token file {path}: it is empty")
    return np.memmap(path, dtype=dtype, mode="r")


def _tail_split(n: int, test_fraction: float, who: str) -> int:
    """Where the held-out tail of ``n`` tokens starts: at least one token each side."""
    split = n - max(1, int(n * test_fraction))
    if split < 1:
        raise DataError(f"{who}: {n} tokens are too few to hold any out")
    return split


def _scan(tokens: np.ndarray) -> tuple[int, hashlib._Hash]:
    """(largest token, sha256 over the token bytes) in one pass over the file."""
    h = hashlib.sha256()
    top = 0
    for start in range(0, len(tokens), _CHUNK_TOKENS):
        chunk = tokens[start : start + _CHUNK_TOKENS]
        h.update(chunk.data)
        top = max(top, int(chunk.max()))
    return top, h


def _fingerprint(content: hashlib._Hash, dtype: np.dtype, vocab_size: int) -> str:
    """sha256 over the token bytes, then the dtype name and vocab size.

    They follow the tokens rather than lead them, so a ``.bin``'s vocabulary
    can be found (largest token + 1) in the same pass that hashes it.
    """
    h = content.copy()
    h.update(f"\0{dtype.name}\0{vocab_size}".encode())
    return h.hexdigest()


def _first_at_least(tokens: np.ndarray, limit: int) -> int:
    for start in range(0, len(tokens), _CHUNK_TOKENS):
        hits = np.flatnonzero(tokens[start : start + _CHUNK_TOKENS] >= limit)
        if hits.size:
            return start + int(hits[0])
    raise AssertionError("no token at or above the limit")  # only called after _scan found one


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
    if urllib.parse.urlsplit(url).scheme.lower() not in _SCHEMES:
        raise DataError(f"source_url {template!r}: only file://, http:// and https:// URLs are read")
    return url


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


# --- language-model windows ----------------------------------------------------------


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

    def eval_indices(self, count: int) -> np.ndarray:
        """At most ``count`` sample indices, evenly strided over all of them."""
        if count < 1:
            raise DataError(f"count must be at least 1, got {count}")
        if count >= self._len:
            return np.arange(self._len, dtype=np.int64)
        return np.arange(count, dtype=np.int64) * self._len // count
