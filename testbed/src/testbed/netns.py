"""A recorder on its own network: a namespace joined to the host by a veth pair.

The SFU and the publishers stay in the host namespace on the veth's host address; the
recorder runs in the namespace, so everything it exchanges with the SFU (API calls, ICE,
media) crosses the veth, where nftables rules inject faults: random UDP loss and total
outages. (This machine's kernel has no ``sch_netem``; delay, jitter and reordering are
injected by the local SFU on its way out instead: ``impair_downlink`` in
``testbed.sfu.faults``.) Needs root.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from types import TracebackType

_TABLE = "recorder_faults"


def available() -> bool:
    """Root with ``ip`` and ``nft``: what the fault tests need."""
    return os.geteuid() == 0 and bool(shutil.which("ip")) and bool(shutil.which("nft"))


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


class RecorderNetwork:
    """``with RecorderNetwork() as net:`` run the recorder with ``net.exec_prefix``."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.namespace = f"rec-{tag}"
        self._host_if = f"vh{tag}"
        self._ns_if = f"vr{tag}"
        octet = 1 + secrets.randbelow(250)
        self.host_address = f"10.241.{octet}.1"
        self.recorder_address = f"10.241.{octet}.2"

    @property
    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace]

    def __enter__(self) -> RecorderNetwork:
        _run("ip", "netns", "add", self.namespace)
        try:
            _run("ip", "link", "add", self._host_if, "type", "veth", "peer", "name", self._ns_if)
            _run("ip", "link", "set", self._ns_if, "netns", self.namespace)
            _run("ip", "addr", "add", f"{self.host_address}/24", "dev", self._host_if)
            _run("ip", "link", "set", self._host_if, "up")
            ns = self.exec_prefix
            _run(*ns, "ip", "link", "set", "lo", "up")
            _run(*ns, "ip", "addr", "add", f"{self.recorder_address}/24", "dev", self._ns_if)
            _run(*ns, "ip", "link", "set", self._ns_if, "up")
            _run(*ns, "nft", "add", "table", "inet", _TABLE)
            for hook in ("input", "output"):
                _run(
                    *ns,
                    "nft",
                    "add",
                    "chain",
                    "inet",
                    _TABLE,
                    hook,
                    f"{{ type filter hook {hook} priority 0; policy accept; }}",
                )
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        subprocess.run(["ip", "link", "del", self._host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, check=False)

    def heal(self) -> None:
        for hook in ("input", "output"):
            _run(*self.exec_prefix, "nft", "flush", "chain", "inet", _TABLE, hook)

    def lose(self, percent: int) -> None:
        """Drop this share of UDP datagrams (media, ICE) in both directions, at random."""
        self.heal()
        for hook in ("input", "output"):
            _run(
                *self.exec_prefix,
                "nft",
                "add",
                "rule",
                "inet",
                _TABLE,
                hook,
                "meta",
                "l4proto",
                "udp",
                "numgen",
                "random",
                "mod",
                "100",
                "<",
                str(percent),
                "drop",
            )

    def cut(self) -> None:
        """A total outage: nothing crosses the veth, API calls included."""
        self.heal()
        for hook, iface in (("input", "iifname"), ("output", "oifname")):
            _run(
                *self.exec_prefix,
                "nft",
                "add",
                "rule",
                "inet",
                _TABLE,
                hook,
                iface,
                self._ns_if,
                "drop",
            )
