"""Token corpora: preparation, the held-out split, shards read by URL, LM windows."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from hypergpu.config.schema import DataConfig
from hypergpu.data.corpus import (
    SEPARATOR,
    Corpus,
    TokenShardInfo,
    TokenWindows,
    check_fingerprint,
    load_corpus,
    read_shard,
    shard_url,
    split_files,
    text_sources,
)
from hypergpu.data.tokenizer import ByteTokenizer, VocabTokenizer, load_tokenizer, token_dtype
from hypergpu.errors import DataError


def _text_dir(root: Path, count: int = 12) -> Path:
    src = root / "src"
    for i in range(count):
        f = src / f"pkg{i % 3}" / f"mod{i:02d}.py"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"# module {i}\n" + f"def f{i}(x):\n    return x * {i}\n" * (20 + i))
    (src / ".hidden").write_text("never read")
    return src


def _text_cfg(tmp_path: Path, src: Path, **kw: object) -> DataConfig:
    return DataConfig(dataset="text", path=src, cache_dir=tmp_path / "cache", **kw)


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    return load_corpus(_text_cfg(tmp_path, _text_dir(tmp_path)))


def test_directory_round_trip_split_and_cache(tmp_path: Path) -> None:
    src = _text_dir(tmp_path)
    cfg = _text_cfg(tmp_path, src, test_fraction=0.3)
    c = load_corpus(cfg)

    assert c.files == tuple(text_sources(src)) and all(".hidden" not in str(p) for p in c.files)
    assert set(c.train_files).isdisjoint(c.heldout_files) and c.heldout_files
    assert sorted(c.train_files + c.heldout_files) == sorted(c.files)
    # Bytes in == tokens out: training files, then held-out ones, each followed by the separator.
    train = b"".join(p.read_bytes() + SEPARATOR for p in c.train_files)
    held = b"".join(p.read_bytes() + SEPARATOR for p in c.heldout_files)
    assert c.train.tobytes() == train and c.heldout.tobytes() == held
    assert c.split == len(train) and c.dtype == np.uint8 and c.vocab_size == 256
    assert c.source_bytes == sum(p.stat().st_size for p in c.files)
    assert not c.tokens.flags.writeable

    mtime = c.path.stat().st_mtime_ns
    again = load_corpus(cfg)
    assert (again.path, again.split, again.fingerprint) == (c.path, c.split, c.fingerprint)
    assert again.path.stat().st_mtime_ns == mtime  # reused, not rewritten
    assert c.describe()["heldout_tokens"] == len(held)

    # Changing a source file prepares a new token file.
    c.train_files[0].write_text("changed")
    assert load_corpus(cfg).fingerprint != c.fingerprint


def test_held_out_files_follow_the_name_hash() -> None:
    rels = sorted(f"dir/file{i}.txt" for i in range(200))
    train, held = split_files(rels, 0.25)
    assert set(train).isdisjoint(held) and sorted(train + held) == rels
    for r in held:
        assert int(hashlib.sha256(r.encode()).hexdigest()[:8], 16) / 2**32 < 0.25
    assert 0.15 < len(held) / len(rels) < 0.35
    # Tiny corpora: one held out, one kept, whatever the hashes say.
    assert split_files(["a", "b"], 1e-9) == (["a"], ["b"])
    assert split_files(["a", "b"], 1 - 1e-9) == (["a"], ["b"])
    assert split_files(["only"], 0.5) == (["only"], [])


def test_one_file_corpus_holds_out_its_tail(tmp_path: Path) -> None:
    src = tmp_path / "one"
    src.mkdir()
    (src / "input.txt").write_bytes(b"x" * 998)
    c = load_corpus(_text_cfg(tmp_path, src, test_fraction=0.1))
    assert len(c.tokens) == 1000 and c.split == 900 and c.heldout_files == ()


def test_shards_cover_training_once_and_verify_by_file_url(corpus: Corpus) -> None:
    shards = corpus.shards(3, block_size=16)
    assert [s.index for s in shards] == [0, 1, 2]
    assert shards[0].start == 0 and shards[-1].stop == corpus.split
    assert all(a.stop == b.start for a, b in zip(shards, shards[1:], strict=False))
    assert max(s.stop - s.start for s in shards) - min(s.stop - s.start for s in shards) <= 1
    url = shard_url(None, corpus)
    assert url.startswith("file://")
    got = np.concatenate([read_shard(url, s, corpus.dtype) for s in shards])
    assert np.array_equal(got, corpus.train)
    s = shards[1]
    assert len(s) == (s.stop - s.start - 1) // 16
    assert TokenShardInfo.from_meta(s.as_meta()) == s


def test_tampered_short_and_missing_files_are_refused(corpus: Corpus, tmp_path: Path) -> None:
    shards = corpus.shards(2, block_size=8)
    copy = tmp_path / "copy.bin"
    data = bytearray(corpus.path.read_bytes())
    data[shards[1].start + 5] ^= 0xFF
    copy.write_bytes(bytes(data))
    url = copy.as_uri()
    assert np.array_equal(read_shard(url, shards[0], corpus.dtype), corpus.train[: shards[0].stop])
    with pytest.raises(DataError, match=rf"shard 1 .*{url}.*checksum mismatch"):
        read_shard(url, shards[1], corpus.dtype)

    copy.write_bytes(corpus.path.read_bytes()[: shards[1].stop - 3])
    with pytest.raises(DataError, match=rf"{url}: short read"):
        read_shard(url, shards[1], corpus.dtype)

    gone = (tmp_path / "gone.bin").as_uri()
    with pytest.raises(DataError, match=rf"{gone}: cannot read"):
        read_shard(gone, shards[0], corpus.dtype)


def test_shard_url_template(corpus: Corpus) -> None:
    url = shard_url("file:///shared/{fingerprint}/{file}", corpus)
    assert url == f"file:///shared/{corpus.fingerprint}/{corpus.path.name}"
    with pytest.raises(DataError, match="source_url"):
        shard_url("ftp://host/{file}", corpus)


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    body = b""
    honour_range = True

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        if self.honour_range and rng:
            a, b = (int(v) for v in rng.removeprefix("bytes=").split("-"))
            part = self.body[a : b + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {a}-{b}/{len(self.body)}")
        else:
            part = self.body
            self.send_response(200)
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        self.wfile.write(part)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("honour_range", [True, False])
def test_read_shard_over_http(
    corpus: Corpus,
    http_server: http.server.HTTPServer,
    honour_range: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_RangeHandler, "body", corpus.path.read_bytes())
    monkeypatch.setattr(_RangeHandler, "honour_range", honour_range)
    url = f"http://127.0.0.1:{http_server.server_address[1]}/{corpus.path.name}"
    s = corpus.shards(2, block_size=8)[1]
    assert np.array_equal(read_shard(url, s, corpus.dtype), corpus.tokens[s.start : s.stop])


def test_empty_and_missing_directories(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / ".git").mkdir(parents=True)
    (empty / ".git" / "HEAD").write_text("ref")
    with pytest.raises(DataError, match=f"{empty}: the directory holds no files"):
        load_corpus(_text_cfg(tmp_path, empty))
    with pytest.raises(DataError, match="not a directory"):
        load_corpus(_text_cfg(tmp_path, tmp_path / "missing"))


def _bin_cfg(tmp_path: Path, path: Path, **kw: object) -> DataConfig:
    return DataConfig(dataset="tokens", path=path, cache_dir=tmp_path / "cache", **kw)


def test_token_bin(tmp_path: Path) -> None:
    path = tmp_path / "train.bin"
    tokens = (np.arange(1000) * 7 % 500).astype("<u2")
    tokens.tofile(path)
    c = load_corpus(_bin_cfg(tmp_path, path, test_fraction=0.1))
    assert (c.vocab_size, c.split, c.dtype) == (500, 900, np.uint16)
    assert np.array_equal(c.tokens, tokens) and c.path == path
    assert load_corpus(_bin_cfg(tmp_path, path), vocab_size=512).fingerprint != c.fingerprint

    with pytest.raises(DataError, match=rf"{path}: token 499 at position \d+ is outside .* of 499"):
        load_corpus(_bin_cfg(tmp_path, path), vocab_size=499)

    path.write_bytes(tokens.tobytes() + b"\x01")
    with pytest.raises(DataError, match=f"{path}: its length 2001 bytes is odd"):
        load_corpus(_bin_cfg(tmp_path, path))
    path.write_bytes(b"")
    with pytest.raises(DataError, match=f"{path}: it is empty"):
        load_corpus(_bin_cfg(tmp_path, path))


def _word_vocab(path: Path, words: list[str]) -> Path:
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {w: i for i, w in enumerate(["[UNK]", *words])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path


def test_vocab_file(tmp_path: Path) -> None:
    vocab = _word_vocab(tmp_path / "vocab.json", ["def", "return", "x", "(", ")", ":", "*"])
    tok = load_tokenizer(vocab)
    assert isinstance(tok, VocabTokenizer) and tok.vocab_size == 8
    assert tok.decode(tok.encode(b"def x ( ) : return x")) == "def x ( ) : return x"
    src = _text_dir(tmp_path, count=3)
    c = load_corpus(_text_cfg(tmp_path, src, tokenizer=vocab), vocab_size=8)
    assert c.vocab_size == 8 and c.dtype == np.uint8 and int(c.tokens.max()) < 8

    with pytest.raises(DataError, match=rf"{vocab}: the model's vocab_size 300 does not match .*'s 8"):
        load_corpus(_text_cfg(tmp_path, src, tokenizer=vocab), vocab_size=300)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=f"{bad}: not a `tokenizers` vocabulary"):
        load_tokenizer(bad)


def test_byte_tokenizer_and_dtypes() -> None:
    tok = ByteTokenizer()
    assert tok.decode(tok.encode("héllo".encode())) == "héllo"
    assert [token_dtype(v).name for v in (2, 256, 257, 65536, 65537)] == [
        "uint8", "uint8", "uint16", "uint16", "uint32",
    ]


def test_block_size_longer_than_a_shard(corpus: Corpus) -> None:
    per_shard = corpus.split // 4
    corpus.shards(4, block_size=per_shard - 1)
    with pytest.raises(DataError, match=f"block_size {per_shard} is longer than a shard of {per_shard} "):
        corpus.shards(4, block_size=per_shard)


def test_fingerprint_mismatch_names_the_node(corpus: Corpus) -> None:
    check_fingerprint(corpus.fingerprint, corpus, "node 3")
    with pytest.raises(DataError, match=r"^node 3: corpus fingerprint mismatch: this node's text"):
        check_fingerprint("0" * 64, corpus, "node 3")


@pytest.mark.parametrize(
    "change",
    [
        {"samples": 99},
        {"stop": 0},
        {"checksum": "xyz"},
        {"index": True},
        {"extra": 1},
        {"block_size": 0},
    ],
)
def test_shard_meta_nonsense_is_refused(corpus: Corpus, change: dict[str, object]) -> None:
    meta = {**corpus.shards(2, block_size=8)[0].as_meta(), **change}
    with pytest.raises(DataError, match="shard"):
        TokenShardInfo.from_meta(meta)


def test_token_windows_shift_by_one() -> None:
    tokens = np.arange(50, dtype=np.uint16)
    w = TokenWindows(tokens, block_size=8)
    assert len(w) == 6  # (50 - 1) // 8
    x, y = w.batch(torch.tensor([0, 5, 2]))
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (3, 8)
    assert x[1].tolist() == list(range(40, 48)) and y[1].tolist() == list(range(41, 49))
    assert torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(DataError, match="outside 0..5"):
        w.batch(np.array([6]))
    with pytest.raises(DataError, match="too few for one window"):
        TokenWindows(tokens[:8], block_size=8)


def test_real_stdlib_corpus(tmp_path: Path) -> None:
    cfg = DataConfig(dataset="stdlib", cache_dir=tmp_path, test_fraction=0.2)
    c = load_corpus(cfg)
    assert len(c.files) > 1000 and c.source_bytes > 10_000_000
    assert not any({"site-packages", "__pycache__"} & set(p.parts) for p in c.files)
    assert abs(len(c.heldout) / len(c.tokens) - 0.2) < 0.05
    assert load_corpus(cfg).fingerprint == c.fingerprint
