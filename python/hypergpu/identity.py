"""A node's identity: its secp256k1 key, and the signed hello that proves it.

Every node holds a key (an Ethereum account, through ``eth-account``),
created on first use in a file only its owner can read (mode 0600, the hex
private key on one line). The key's address is who the node is: the
coordinator binds a node's name to the address that first joined under it
(or to the one its ``nodes.allow`` list names), and pays the node's rewards
to that address unless the node signs another (its payout address).

A hello is signed over :func:`hello_message`: the connection's challenge
(32 fresh bytes the coordinator sent in its answer to the transport's join),
the coordinator's certificate fingerprint, the node's name and its payout
address. A recorded hello is worthless on any other connection (another
challenge), and a hello that a man in the middle relays to another
coordinator names the wrong fingerprint. Signatures are EIP-191 personal
messages, so any Ethereum wallet can produce and check them.

This module is sans-IO apart from :meth:`NodeKey.load_or_create`.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from hypergpu.errors import ConfigError, FrameError

__all__ = ["CHALLENGE_BYTES", "KEY_FILE_ENV", "NodeKey", "default_key_file", "hello_message", "join_fingerprint", "recover_signer"]

#: Bytes of a join challenge (the transport's).
CHALLENGE_BYTES = 32
#: The environment variable naming a node's key file.
KEY_FILE_ENV = "HYPERGPU_KEY_FILE"
_DOMAIN = b"hypergpu-hello-v1\n"
_HEX_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


def hello_message(challenge: bytes, fingerprint: str, name: str, payout: str) -> bytes:
    """What a node signs in its hello: every field unambiguous (canonical JSON after a domain tag)."""
    if len(challenge) != CHALLENGE_BYTES:
        raise FrameError(f"a join challenge has {CHALLENGE_BYTES} bytes, got {len(challenge)}")
    body = {"challenge": challenge.hex(), "coordinator": fingerprint.lower(), "name": name,
            "payout": payout.lower()}
    return _DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def join_fingerprint(join: str) -> str:
    """The coordinator's certificate fingerprint a join string pins (after its ``#``)."""
    return join.rsplit("#", 1)[-1].lower()


def recover_signer(challenge: bytes, fingerprint: str, name: str, payout: str, signature: str) -> str:
    """The (checksummed) address that signed ``signature`` over this hello's fields. Any
    signature recovers to *some* address: the caller compares it with the one claimed.
    A signature that is no signature at all is a :class:`~hypergpu.errors.FrameError`."""
    message = encode_defunct(primitive=hello_message(challenge, fingerprint, name, payout))
    try:
        return str(Account.recover_message(message, signature=signature))
    except Exception as exc:  # eth-keys raises several kinds for a malformed signature
        raise FrameError(f"hello signature is not a valid signature ({type(exc).__name__})") from None


def default_key_file(name: str | None = None, state_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where a node's key lives unless told: ``$HYPERGPU_KEY_FILE``; else beside the node's
    state (``<state_dir>/<name>/node.key``) when it keeps one; else
    ``$XDG_CONFIG_HOME/hypergpu/node.key`` (``~/.config/hypergpu/node.key``)."""
    env = os.environ.get(KEY_FILE_ENV)
    if env:
        return Path(env).expanduser()
    if state_dir is not None and name:
        folder = re.sub(r"[^\w.-]", "_", name) or "node"  # as hypergpu.node.state names its folder
        return Path(state_dir).expanduser() / folder / "node.key"
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config").expanduser()
    return config_home / "hypergpu" / "node.key"


class NodeKey:
    """A node's key; its repr and str show only the address, and it never pickles."""

    __slots__ = ("_account", "path")

    def __init__(self, account: LocalAccount, path: Path | None = None):
        self._account = account
        self.path = path

    @property
    def address(self) -> str:
        """The key's checksummed address: the node's identity, and its payout address by default."""
        return str(self._account.address)

    @property
    def account(self) -> LocalAccount:
        """The eth-account account (to sign chain transactions with, e.g. to claim rewards)."""
        return self._account

    def sign_hello(self, challenge: bytes, fingerprint: str, name: str, payout: str | None = None) -> str:
        """The hex signature of :func:`hello_message` (``payout`` defaults to the key's address)."""
        message = encode_defunct(primitive=hello_message(challenge, fingerprint, name, payout or self.address))
        return "0x" + bytes(self._account.sign_message(message).signature).hex()

    @classmethod
    def of(cls, key: NodeKey | str | os.PathLike[str] | None, name: str | None = None,
           state_dir: str | os.PathLike[str] | None = None) -> NodeKey:
        """``key`` itself, or the key in the file ``key`` names, or the default one
        (:func:`default_key_file` of ``name`` and ``state_dir``), created on first use."""
        return key if isinstance(key, NodeKey) else cls.load_or_create(key or default_key_file(name, state_dir))

    @classmethod
    def generate(cls) -> NodeKey:
        """A fresh key held in memory only (tests; a node's key belongs in a file)."""
        return cls(Account.create())

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> NodeKey:
        """The key in ``path``, created there first (mode 0600, its folder 0700 when new) if the
        file does not exist. A file that others may read, or that holds no key, is refused."""
        path = Path(path).expanduser()
        if not path.exists():
            cls._create(path)
        try:
            st = path.stat()
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read node key file {path}: {exc.strerror}") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"node key file {path} is open to other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                              f"make it private: chmod 600 {path}")
        if not _HEX_KEY.match(text):
            raise ConfigError(f"node key file {path} holds no secp256k1 key (one line of 64 hex digits expected)")
        return cls(Account.from_key(text), path)

    @staticmethod
    def _create(path: Path) -> None:
        """Writes a new key to ``path``: whole (written aside, then linked into place) and never
        over another one (two nodes starting at once end up with the same key, the first one)."""
        # exist_ok: two nodes sharing a key folder may both find it missing and create it at once
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write("0x" + bytes(Account.create().key).hex() + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process made it first: that one is the key
        finally:
            tmp.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"NodeKey(address={self.address})"

    __str__ = __repr__

    def __reduce__(self) -> str:  # never let the key travel through pickle
        raise TypeError("NodeKey cannot be pickled")


def checksum_address(address: str) -> str:
    """``address`` checksummed (an invalid one is a :class:`~hypergpu.errors.FrameError`)."""
    try:
        return str(to_checksum_address(address))
    except ValueError:
        raise FrameError(f"{address!r} is not an address") from None
