"""An emulated interconnect: each rank in its own network namespace behind a shaped link.

Topology (all of it private to the benchmark; the host's namespace is never attached):

    <prefix>-r0: eth0 10.213.0.1/24 --veth-- <prefix>-br: port0 \\
    <prefix>-r1: eth0 10.213.0.2/24 --veth-- <prefix>-br: port1  > bridge br0
    ...                                                          /

Each link is full duplex at BANDWIDTH: a token bucket (`tc ... tbf`) shapes both the rank side
(what the rank sends) and the bridge side (what it receives). A latency L is split L/2 + L/2
with `netem` on the same two sides, so rank to rank one way is L. Needs root, iproute2, and for a
latency the kernel's sch_netem. Everything is deleted on exit, also after an error.
"""

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import List

# a private subnet: it only ever exists inside the benchmark's namespaces
_SUBNET = "10.213.0"


@dataclass(frozen=True)
class EmulatedLink:
    """Per-rank link: bandwidth in Mbit/s each way, one-way rank-to-rank latency in ms."""

    bandwidth_mbit: float
    latency_ms: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "EmulatedLink":
        """'BANDWIDTH_MBIT[,LATENCY_MS]', e.g. '250' or '250,0.5'."""
        parts = text.split(",")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) not in (1, 2) or values[0] <= 0 or (len(values) == 2 and values[1] < 0):
            raise ValueError(f"--emulate-link must be BANDWIDTH_MBIT[,LATENCY_MS] with a positive "
                             f"bandwidth and a non-negative latency, got {text!r}")
        return cls(*values)

    def as_dict(self) -> dict:
        return {"mode": "emulated", "bandwidth_mbit": self.bandwidth_mbit,
                "latency_ms": self.latency_ms}


def _run(*cmd: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.strip()}")


class EmulatedNetwork:
    """Context manager: namespaces, veth pairs, bridge and shaping for `world_size` ranks."""

    RANK_IFNAME = "eth0"

    def __init__(self, link: EmulatedLink, world_size: int):
        self.link, self.world_size = link, world_size
        self.prefix = f"tspb{os.getpid()}"
        self._created: List[str] = []

    def rank_namespace(self, rank: int) -> str:
        return f"{self.prefix}-r{rank}"

    def rank_address(self, rank: int) -> str:
        return f"{_SUBNET}.{rank + 1}"

    @property
    def bridge_namespace(self) -> str:
        return f"{self.prefix}-br"

    def _add_namespace(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self._created.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def _shape(self, namespace: str, device: str) -> None:
        rate = f"{self.link.bandwidth_mbit}mbit"
        # the bucket must hold at least one tick's worth of bytes at this rate (HZ >= 100)
        burst = str(max(64 * 1024, int(self.link.bandwidth_mbit * 1e6 / 8 / 100)))
        tc = ("ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", device)
        if self.link.latency_ms:
            try:
                _run(*tc, "root", "handle", "1:", "netem", "delay",
                     f"{self.link.latency_ms / 2}ms")
            except RuntimeError as err:
                raise RuntimeError(f"--emulate-link latency needs the kernel's netem qdisc "
                                   f"(sch_netem); give the bandwidth alone here ({err})") from err
            _run(*tc, "parent", "1:", "handle", "10:", "tbf", "rate", rate, "burst", burst,
                 "latency", "100ms")
        else:
            _run(*tc, "root", "handle", "1:", "tbf", "rate", rate, "burst", burst,
                 "latency", "100ms")

    def __enter__(self) -> "EmulatedNetwork":
        if os.geteuid() != 0:
            raise PermissionError("--emulate-link needs root (network namespaces and tc); "
                                  "run without it for loopback results")
        for tool in ("ip", "tc"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"--emulate-link needs iproute2's `{tool}` on PATH")
        try:
            self._build()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _build(self) -> None:
        br = self.bridge_namespace
        self._add_namespace(br)
        _run("ip", "-n", br, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", br, "link", "set", "br0", "up")
        for rank in range(self.world_size):
            ns, port, peer = self.rank_namespace(rank), f"port{rank}", f"{self.prefix}v{rank}"
            self._add_namespace(ns)
            # created in the bridge namespace, one end then moved into the rank's namespace
            _run("ip", "-n", br, "link", "add", port, "type", "veth", "peer", "name", peer)
            _run("ip", "-n", br, "link", "set", peer, "netns", ns)
            _run("ip", "-n", ns, "link", "set", peer, "name", self.RANK_IFNAME)
            _run("ip", "-n", ns, "addr", "add", f"{self.rank_address(rank)}/24", "dev",
                 self.RANK_IFNAME)
            _run("ip", "-n", ns, "link", "set", self.RANK_IFNAME, "up")
            _run("ip", "-n", br, "link", "set", port, "master", "br0")
            _run("ip", "-n", br, "link", "set", port, "up")
            self._shape(ns, self.RANK_IFNAME)
            self._shape(br, port)

    def __exit__(self, *exc) -> None:
        # deleting a namespace deletes the veth ends inside it, and with them their peers
        for name in reversed(self._created):
            subprocess.run(("ip", "netns", "del", name), capture_output=True)
        self._created.clear()
