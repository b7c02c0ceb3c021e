"""Who may join under which name: hellos proved by a key, names bound to keys, and
what a peer may send before it is known.

A node's hello carries its key's address, its payout address and its
signature over the connection's challenge, the coordinator's certificate
fingerprint, its name and its payout (:mod:`hypergpu.identity`).
:func:`verify` checks it; :class:`NameBook` decides whether that key may use
that name: a name listed in ``nodes.allow`` belongs to the address listed
(and with a list, only listed names may join); any other name is bound to
the first key that joins under it, for good: the book is kept in
``names.json`` beside the checkpoints (when they are kept), so a restarted
coordinator keeps its bindings. Another key claiming a bound name is
refused; the same key replaces its own stale link. :meth:`NameBook.check`
also holds each key to ``coordinator.admission.max_links_per_key`` names
connected at once.

Every refusal has a reason (counted by the coordinator) and a sentence the
node is told. Sans-IO but for :meth:`NameBook.save` (a small JSON file).

:func:`transport_config` is how the coordinator listens: a peer may send
nothing but its hello (96 KiB at most) until the hello is taken, within
``coordinator.admission.hello_timeout_s``; joins in flight are capped and
validated by QUIC retry above a threshold; and no node's message may be
larger than the biggest update the model can make
(:func:`~hypergpu.protocol.max_node_message`), refused by its header.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hypergpu.config.schema import HyperGPUConfig
from hypergpu.errors import ConfigError, FrameError
from hypergpu.identity import checksum_address, recover_signer
from hypergpu.protocol import Hello, max_node_message
from hypergpu.transport import TransportConfig

log = logging.getLogger("hypergpu.coordinator")

#: Refusal reasons, as counted in ``Coordinator.refusals``.
BAD_SIGNATURE = "bad-signature"  # no signature, or not by the key it names over this connection's challenge
NAME_TAKEN = "name-taken"  # the name is bound to another key
NOT_ALLOWED = "not-allowed"  # nodes.allow is set and does not list the name
KEY_LIMIT = "key-limit"  # the key holds as many connected names as it may

__all__ = ["BAD_SIGNATURE", "KEY_LIMIT", "NAME_TAKEN", "NOT_ALLOWED", "Identity", "NameBook", "Refused", "name_book",
           "transport_config", "verify"]


@dataclass(frozen=True)
class Identity:
    """A hello's proven identity: the key that signed it and where the node is paid."""

    address: str
    payout: str


@dataclass(frozen=True)
class Refused:
    """Why a hello is not taken: the counted ``reason`` and what the node is told."""

    reason: str
    detail: str


def verify(hello: Hello, challenge: bytes, fingerprint: str) -> Identity | Refused:
    """The key ``hello`` proves it holds (its signature over this connection's ``challenge``
    and this coordinator's ``fingerprint``), or why it proves none. A hello recorded on
    another connection, or signed for another coordinator, recovers another address."""
    if hello.address is None or hello.signature is None:
        return Refused(BAD_SIGNATURE, "the hello is not signed: this node needs a key (hypergpu.identity)")
    payout = hello.payout or hello.address
    try:
        signer = recover_signer(challenge, fingerprint, hello.name, payout, hello.signature)
        claimed = checksum_address(hello.address)
    except FrameError as exc:
        return Refused(BAD_SIGNATURE, str(exc))
    if signer != claimed:
        return Refused(BAD_SIGNATURE, f"the hello's signature is not by {claimed} over this connection's "
                                      "challenge (replayed, relayed, or signed for another coordinator)")
    return Identity(claimed, checksum_address(payout))


class NameBook:
    """Which key holds each node name (see the module doc)."""

    def __init__(self, allow: Mapping[str, str] | None = None, path: Path | None = None,
                 max_links_per_key: int | None = None):
        self.allow = {name: checksum_address(a) for name, a in (allow or {}).items()}
        self.path = path
        self.max_links_per_key = max_links_per_key
        #: name -> address bound at first join (the allow-list's are in :attr:`allow`)
        self.bound: dict[str, str] = {}
        if path is not None and path.exists():
            try:
                kept = json.loads(path.read_text(encoding="utf-8"))
                self.bound = {str(n): checksum_address(str(a)) for n, a in kept["names"].items()}
            except (OSError, ValueError, KeyError, TypeError, FrameError) as exc:
                # Starting with no bindings would hand every name to whoever comes first.
                raise ConfigError(f"node name bindings {path} are unreadable ({exc}); fix or remove the file "
                                  "(removing it frees every name)") from None

    def holder(self, name: str) -> str | None:
        """The address ``name`` belongs to (None: nobody's yet)."""
        return self.allow.get(name) or self.bound.get(name)

    def check(self, name: str, who: Identity, connected: Iterable[tuple[str, str]] = ()) -> Refused | None:
        """Whether ``who`` may join as ``name`` (None: it may). ``connected``: (name, address)
        of the nodes connected now, for the per-key limit (the name itself not counted: the
        same key replaces its own stale link)."""
        if self.allow and name not in self.allow:
            return Refused(NOT_ALLOWED, f"the name {name!r} is not on this coordinator's allow-list (nodes.allow)")
        holder = self.holder(name)
        if holder is not None and holder != who.address:
            how = "allow-listed for" if name in self.allow else "bound to"
            return Refused(NAME_TAKEN, f"the name {name!r} is {how} the key {holder}; this node's key is "
                                       f"{who.address} (use its own key file, or another name)")
        if self.max_links_per_key is not None:
            held = {n for n, a in connected if a == who.address and n != name}
            if len(held) >= self.max_links_per_key:
                return Refused(KEY_LIMIT, f"the key {who.address} already has {len(held)} nodes connected "
                                          f"(coordinator.admission.max_links_per_key = {self.max_links_per_key})")
        return None

    def bind(self, name: str, who: Identity) -> bool:
        """Bind ``name`` to ``who``'s key if it is not bound yet (after :meth:`check`); True when new."""
        if self.holder(name) is not None:
            return False
        self.bound[name] = who.address
        log.info("node name %r bound to key %s", name, who.address)
        return True

    def save(self) -> None:
        """Write the bindings (whole: written aside, then renamed into place)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"names": self.bound}, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


def name_book(config: HyperGPUConfig) -> NameBook:
    """The run's name book: ``nodes.allow``, and the bindings kept in ``names.json`` beside the
    checkpoints (in memory only when checkpoints are off)."""
    c = config.coordinator
    return NameBook(config.nodes.allow, c.checkpoint_dir / "names.json" if c.checkpoint_every else None,
                    c.admission.max_links_per_key)


def transport_config(config: HyperGPUConfig, num_params: int) -> TransportConfig:
    """How the coordinator of a model of ``num_params`` values listens (see the module doc)."""
    a = config.coordinator.admission
    return TransportConfig(max_message_bytes=max_node_message(num_params), hello_timeout=a.hello_timeout_s,
                           max_pending=a.max_pending, max_pending_per_address=a.max_pending_per_address,
                           retry_above=a.retry_above, congestion=config.network.congestion)
