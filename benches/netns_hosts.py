"""Hosts in network namespaces behind kernel-shaped links, for benches and tests.

One namespace holds a Linux bridge (the "switch"); every host is a namespace
of its own with a veth ``wan0`` whose other end is a port of that bridge. A
host's link is shaped by the kernel, never by the process inside it:

* bandwidth: a tc ``tbf`` on the host's own ``wan0`` (its egress) and one on
  its bridge port (its ingress), both at the link's rate;
* loss: an nftables ``numgen random`` drop on the *receiving* side, so it
  acts on single packets after tbf has cut UDP/TCP segmentation-offload
  batches into wire-sized ones (a drop at the sender's output hook would
  drop a whole GSO batch at once). Packets from a lossy host are dropped at
  every other host's input; packets to it at its own input. This kernel has
  no netem, so latency is not added here: the transport's own shaping adds
  it where a bench wants it.

The coordinator's host (or any host given ``Link()``) is unshaped.
Namespace names carry the creating process's id (``hgw<pid>-...``):
:func:`cleanup_leftovers` removes those whose creator is gone (a crashed
run), and :func:`hosts` removes its own on exit, failure included.
Addresses are ``<subnet>.1`` for host 0 and ``<subnet>.(10 + i)`` for host
i >= 1, inside namespaces this module creates; nothing is routed elsewhere.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

PREFIX = "hgw"
_NAME = re.compile(rf"^{PREFIX}(\d+)-")
#: Interface name of every host's end of its veth.
DEV = "wan0"
#: tbf queue: the same 128 KiB with which tests/test_netns_shaping.py found the
#: kernel's shaping and the transport's in agreement.
QUEUE_BYTES = 128 * 1024


class NetnsUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, tools missing, or the kernel refused)."""


@dataclass(frozen=True)
class Link:
    """A host's access link: ``rate_bit`` each way (None: unshaped), random ``loss`` each way."""

    rate_bit: int | None = None
    loss: float = 0.0

    def describe(self) -> str:
        rate = "unshaped" if self.rate_bit is None else f"{self.rate_bit / 1e6:g} Mbit/s"
        return rate + (f", {self.loss:.0%} loss" if self.loss else "")


@dataclass(frozen=True)
class Host:
    netns: str
    ip: str
    port: str  # its veth's end on the bridge, in the switch namespace
    link: Link
    dev: str = DEV

    def exec(self, *cmd: str) -> list[str]:
        """``cmd`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *cmd]


@dataclass
class Topology:
    switch: str
    hosts: list[Host] = field(default_factory=list)

    @property
    def namespaces(self) -> list[str]:
        return [self.switch, *(h.netns for h in self.hosts)]

    def dropped(self) -> dict[str, int]:
        """Packets the loss rules dropped so far, per namespace that has them."""
        out: dict[str, int] = {}
        for h in self.hosts:
            r = _run("ip", "netns", "exec", h.netns, "nft", "list", "table", "inet", "hgwan", check=False)
            if r.returncode == 0:
                out[h.netns] = sum(int(n) for n in re.findall(r"counter packets (\d+)", r.stdout))
        return out


def why_unavailable() -> str | None:
    """Why namespaces with kernel shaping cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "tc", "nft"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (run scripts/system-deps.sh)"
    return None


def _run(*cmd: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, input=stdin)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def _ours() -> list[tuple[str, int]]:
    listing = _run("ip", "netns", "list", check=False).stdout
    found = []
    for line in listing.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = _NAME.match(name)
        if m:
            found.append((name, int(m.group(1))))
    return found


def cleanup_leftovers() -> list[str]:
    """Deletes this module's namespaces whose creating process is gone; their names."""
    gone = [name for name, pid in _ours() if not os.path.exists(f"/proc/{pid}")]
    for name in gone:
        _run("ip", "netns", "del", name, check=False)
    return gone


def _delete(names: Sequence[str]) -> None:
    # Deleting a namespace deletes its veth ends, and with them their peers.
    for name in names:
        _run("ip", "netns", "del", name, check=False)


def _tbf(netns: str, dev: str, rate_bit: int) -> None:
    burst = max(16 * 1024, rate_bit // 8 // 500)  # >= 2 ms of the rate
    _run("tc", "-n", netns, "qdisc", "add", "dev", dev, "root", "tbf",
         "rate", f"{rate_bit}bit", "burst", str(burst), "limit", str(QUEUE_BYTES))


def _loss_rules(host: Host, lossy: Sequence[Host]) -> None:
    """One input chain: drop a lossy peer's packets (and, for a lossy host, all it receives) at random."""
    rules = []
    if host.link.loss:
        rules.append(f"numgen random mod 10000 < {round(host.link.loss * 10_000)} counter drop")
    for peer in lossy:
        if peer is not host:
            rules.append(f"ip saddr {peer.ip} numgen random mod 10000 < {round(peer.link.loss * 10_000)} counter drop")
    if not rules:
        return
    body = "\n".join(f"    {r}" for r in rules)
    table = ("table inet hgwan {\n  chain in {\n    type filter hook input priority 0; policy accept;\n"
             f"{body}\n  }}\n}}\n")
    _run("ip", "netns", "exec", host.netns, "nft", "-f", "-", stdin=table)


@contextmanager
def hosts(links: Sequence[Link], subnet: str = "10.79.0") -> Iterator[Topology]:
    """Host i gets ``links[i]``; all hang off one bridge. Removed on exit, whatever happened."""
    reason = why_unavailable()
    if reason:
        raise NetnsUnavailable(reason)
    cleanup_leftovers()
    tag = f"{PREFIX}{os.getpid()}"
    topo = Topology(switch=f"{tag}-sw")
    made: list[str] = []
    try:
        r = _run("ip", "netns", "add", topo.switch, check=False)
        if r.returncode != 0:
            raise NetnsUnavailable(r.stderr.strip())
        made.append(topo.switch)
        sw = topo.switch
        _run("ip", "-n", sw, "link", "set", "lo", "up")
        _run("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", sw, "link", "set", "br0", "up")
        for i, link in enumerate(links):
            host = Host(netns=f"{tag}-h{i}", ip=f"{subnet}.{1 if i == 0 else 10 + i}", port=f"p{i}", link=link)
            _run("ip", "netns", "add", host.netns)
            made.append(host.netns)
            _run("ip", "-n", host.netns, "link", "set", "lo", "up")
            _run("ip", "-n", host.netns, "link", "add", DEV, "type", "veth", "peer", "name", host.port, "netns", sw)
            _run("ip", "-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", DEV)
            _run("ip", "-n", host.netns, "link", "set", DEV, "up")
            _run("ip", "-n", sw, "link", "set", host.port, "master", "br0")
            _run("ip", "-n", sw, "link", "set", host.port, "up")
            if link.rate_bit is not None:
                _tbf(host.netns, DEV, link.rate_bit)  # what it sends
                _tbf(sw, host.port, link.rate_bit)  # what it receives
            topo.hosts.append(host)
        lossy = [h for h in topo.hosts if h.link.loss]
        for host in topo.hosts:
            _loss_rules(host, lossy)
        yield topo
    finally:
        _delete(list(reversed(made)))


def reachable(topo: Topology, timeout_s: float = 10.0) -> list[str]:
    """Hosts the first host cannot open a TCP connection to (a refused one counts as reached)."""
    probe = ("import socket,sys\nbad=[]\nfor ip in sys.argv[2:]:\n"
             "    s=socket.socket(); s.settimeout(float(sys.argv[1]))\n"
             "    try: s.connect((ip, 9))\n"
             "    except ConnectionRefusedError: pass\n"
             "    except OSError: bad.append(ip)\n"
             "    finally: s.close()\nprint(' '.join(bad))\n")
    first, rest = topo.hosts[0], topo.hosts[1:]
    r = subprocess.run(first.exec("python3", "-c", probe, str(timeout_s), *(h.ip for h in rest)),
                       capture_output=True, text=True, timeout=timeout_s * len(rest) + 30)
    return r.stdout.split()
