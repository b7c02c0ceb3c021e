"""Where a coordinator can be reached, and the identity that lets nodes trust it.

Nodes pin the coordinator's certificate by its fingerprint (the part of the
join string after ``#``). A coordinator that checkpoints keeps its
certificate and key beside the checkpoints (``identity/cert.der`` and
``identity/key.der``, mode 0600), so a restarted or resumed coordinator
presents the same fingerprint and its running nodes reconnect without being
told anything new.

The join string names an address nodes can reach: ``coordinator.advertise``
(a host, or host:port) when set; else the address bound, or — bound to every
interface (``0.0.0.0``) — one join string per interface address.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from pathlib import Path

from hypergpu.errors import ConfigError
from hypergpu.transport import new_identity

#: ``ioctl`` request for an interface's IPv4 address (Linux).
_SIOCGIFADDR = 0x8915


def kept_identity(directory: Path) -> tuple[bytes, bytes]:
    """The certificate and key kept in ``directory`` (made and written there, 0600, the first time)."""
    cert_path, key_path = directory / "cert.der", directory / "key.der"
    if cert_path.exists() and key_path.exists():
        try:
            return cert_path.read_bytes(), key_path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the coordinator's identity in {directory}: {exc.strerror}") from None
    cert, key = new_identity()
    directory.mkdir(parents=True, exist_ok=True)
    for path, data in ((cert_path, cert), (key_path, key)):
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    return cert, key


def join_strings(bound_host: str, port: int, fingerprint: str, advertise: str | None) -> list[str]:
    """Every join string a node may use, the one to print first."""
    if advertise:
        host, given = _host_port(advertise)
        return [f"quic://{_bracketed(host)}:{given or port}#{fingerprint}"]
    if bound_host in ("0.0.0.0", "::", ""):
        hosts = interface_addresses() or ["127.0.0.1"]
    else:
        hosts = [bound_host]
    return [f"quic://{_bracketed(h)}:{port}#{fingerprint}" for h in hosts]


def interface_addresses() -> list[str]:
    """This host's IPv4 interface addresses, loopback last."""
    found: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
            except OSError:
                continue  # down, or no IPv4 address
            found.append(socket.inet_ntoa(raw[20:24]))
    return sorted(set(found), key=lambda a: (a.startswith("127."), a))


def _host_port(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, None


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
