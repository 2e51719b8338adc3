"""Test hosts in network namespaces, and network faults between them (dev/test only).

:class:`TestNet` makes N namespaces, each with its own IPv4 address on a bridge of its own (a veth
pair per host; the bridge also has an address, so this process in the root namespace reaches
every host), runs processes inside them, and applies faults with nftables *inside* each
namespace, so nothing outside the namespaces this run created is touched:

* symmetric partitions (:meth:`TestNet.partition`), isolating one host (:meth:`TestNet.isolate`),
  a bridge topology where two sides each reach one middle host (:meth:`TestNet.bridge`);
* one-way drops (:meth:`TestNet.block`: packets from ``src`` never reach ``dst``; for TCP that
  also breaks connections opened the other way, whose answers are dropped);
* random loss (:meth:`TestNet.loss`: ``numgen random mod 100 < N drop``);
* flapping links (:class:`Flapper`: a partition applied and healed on a period);
* delay, jitter and reordering with ``tc netem`` where the kernel has it
  (:meth:`TestNet.netem`); :func:`netem_available` says whether it does. Where it does not (these
  machines: "Specified qdisc kind is unknown"), :mod:`.relay` delays TCP streams in user
  space instead; :attr:`TestNet.delay_mode` names the one that ran.

Names start with a per-run prefix (``phc`` + 6 random hex), the subnet is a /24 of 10.233.0.0/16
that no route of this machine uses, and :meth:`TestNet.remove` (also on failure, through the
context manager and an ``atexit`` hook) deletes every namespace, veth pair and the bridge.
Processes started with :meth:`TestNet.spawn` are killed first.

Needs root and ``ip netns``; :func:`unavailable_reason` says why not, for a clear skip.
nftables is installed from Debian on first use when root and missing (:func:`ensure_nftables`).
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

NFT_TABLE = "phalanx_chaos"
SUBNET_POOL = ipaddress.IPv4Network("10.233.0.0/16")
CMD_TIMEOUT_S = 30.0
APT_TIMEOUT_S = 600.0


class NetnsError(RuntimeError):
    """A namespace operation failed; the message holds the command and its error output."""


def _run(argv: Sequence[str], timeout: float = CMD_TIMEOUT_S, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def unavailable_reason() -> str | None:
    """None if this process can make network namespaces, else why not (for a test skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root (run the tests as root, as CI does)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"phcprobe{secrets.token_hex(3)}"
    try:
        _run(["ip", "netns", "add", probe])
    except NetnsError as exc:
        return f"`ip netns add` failed here: {exc}"
    _run(["ip", "netns", "del", probe])
    return None


def ensure_nftables() -> str | None:
    """Make ``nft`` available (apt-get install nftables when root and missing). None when it
    is there, else why not."""
    if shutil.which("nft") is not None:
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "nftables is not installed (Debian package `nftables`) and cannot be installed here"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "nftables"]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=APT_TIMEOUT_S, env=env)
        if done.returncode != 0:
            return f"installing nftables failed: {' '.join(argv)}: {done.stderr.strip()[-300:]}"
    return None if shutil.which("nft") is not None else "nftables installed but `nft` not found"


def netem_available() -> bool:
    """Whether the kernel has the netem qdisc (tried on the loopback of a scratch namespace)."""
    probe = f"phcnetem{secrets.token_hex(3)}"
    try:
        _run(["ip", "netns", "add", probe])
    except NetnsError:
        return False
    try:
        _run(["ip", "-n", probe, "link", "set", "lo", "up"])
        _run(["tc", "-n", probe, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"])
        return True
    except NetnsError:
        return False  # "Specified qdisc kind is unknown" on kernels without sch_netem
    finally:
        _run(["ip", "netns", "del", probe])


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of SUBNET_POOL that no route of this machine overlaps, picked at random."""
    routes = _run(["ip", "-4", "route", "show", "table", "all"])
    used: list[ipaddress.IPv4Network] = []
    for line in routes.splitlines():
        word = line.split()[0] if line.split() else ""
        if word and word[0].isdigit():
            try:
                used.append(ipaddress.IPv4Network(word, strict=False))
            except ValueError:
                continue
    candidates = list(SUBNET_POOL.subnets(new_prefix=24))
    for _ in range(256):
        net = candidates[secrets.randbelow(len(candidates))]
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise NetnsError(f"no free /24 left in {SUBNET_POOL}")


@dataclass(frozen=True, slots=True)
class Host:
    index: int
    namespace: str
    address: str
    veth: str  # the end inside the namespace


@dataclass
class _Rules:
    """What one host's input chain drops: every packet from ``blocked`` sources, and
    ``loss[source]`` percent of packets from a source (``None``: from anyone)."""

    blocked: set[str] = field(default_factory=set)
    loss: dict[str | None, int] = field(default_factory=dict)

    def render(self) -> str:
        lines = [f"table inet {NFT_TABLE} {{", "  chain input {"]
        lines.append("    type filter hook input priority 0; policy accept;")
        for source in sorted(self.blocked):
            lines.append(f"    ip saddr {source} drop")
        for lossy, percent in sorted(self.loss.items(), key=lambda kv: str(kv[0])):
            match = "" if lossy is None else f"ip saddr {lossy} "
            # nft's numgen compares against 0..99: 100% loss is a plain drop.
            chance = "" if percent >= 100 else f"numgen random mod 100 < {percent} "
            lines.append(f"    {match}{chance}drop")
        lines += ["  }", "}"]
        return "\n".join(lines) + "\n"


class TestNet:
    """N test hosts on one bridge. Use as a context manager; see the module docstring."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, hosts: int, prefix: str | None = None) -> None:
        if not 1 <= hosts <= 200:
            raise ValueError("between 1 and 200 hosts")
        self.prefix = prefix or f"phc{secrets.token_hex(3)}"
        self.bridge_name = f"{self.prefix}br"
        self._count = hosts
        self.hosts: list[Host] = []
        self.gateway = ""  # the bridge's address, in the root namespace
        self.delay_mode = "none"  # "netem" or "relay" once a delay was applied
        self._rules: dict[int, _Rules] = {}
        self._processes: list[subprocess.Popen[Any]] = []
        self._created: list[str] = []  # namespaces made so far (for cleanup after a failure)
        self._bridge_made = False
        self._lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> TestNet:
        try:
            self.create()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def create(self) -> None:
        reason = ensure_nftables()
        if reason is not None:
            raise NetnsError(reason)
        atexit.register(self.remove)
        subnet = _free_subnet()
        addresses = list(subnet.hosts())
        self.gateway = str(addresses[-1])
        _run(["ip", "link", "add", self.bridge_name, "type", "bridge"])
        self._bridge_made = True
        _run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge_name])
        _run(["ip", "link", "set", self.bridge_name, "up"])
        for i in range(self._count):
            ns, outside, inside = f"{self.prefix}-{i}", f"{self.prefix}v{i}", f"{self.prefix}p{i}"
            _run(["ip", "netns", "add", ns])
            self._created.append(ns)
            _run(["ip", "link", "add", outside, "type", "veth", "peer", "name", inside])
            _run(["ip", "link", "set", inside, "netns", ns])
            _run(["ip", "link", "set", outside, "master", self.bridge_name])
            _run(["ip", "link", "set", outside, "up"])
            address = str(addresses[i])
            _run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", inside])
            _run(["ip", "-n", ns, "link", "set", inside, "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            self.hosts.append(Host(i, ns, address, inside))
            self._rules[i] = _Rules()
            self._apply(i)

    def remove(self) -> None:
        """Kill what was spawned, delete the namespaces (their veth ends go with them), the
        bridge. Safe to call twice and after a partial create."""
        with self._lock:
            for process in self._processes:
                if process.poll() is None:
                    try:
                        os.killpg(process.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        process.kill()
                    process.wait(timeout=10)
                for pipe in (process.stdin, process.stdout, process.stderr):
                    if pipe is not None:
                        pipe.close()
            self._processes.clear()
            for i, ns in enumerate(self._created):
                # Deleting our end removes the pair at once; a namespace's own teardown (and
                # with it the pair's) may lag behind `ip netns del`.
                outside = f"{self.prefix}v{i}"
                subprocess.run(["ip", "link", "del", outside], capture_output=True, timeout=30)
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
            self._created.clear()
            if self._bridge_made:
                subprocess.run(
                    ["ip", "link", "del", self.bridge_name], capture_output=True, timeout=30
                )
                self._bridge_made = False
        atexit.unregister(self.remove)

    # -- processes ----------------------------------------------------------------------------

    def command(self, host: int, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[host].namespace, *argv]

    def run(self, host: int, argv: Sequence[str], timeout: float = CMD_TIMEOUT_S) -> str:
        """Run ``argv`` inside ``host`` and return its stdout (NetnsError if it fails)."""
        return _run(self.command(host, argv), timeout=timeout)

    def spawn(self, host: int, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host`` in its own process group; killed by :meth:`remove`."""
        process = subprocess.Popen(self.command(host, argv), start_new_session=True, **popen)
        with self._lock:
            self._processes.append(process)
        return process

    # -- faults -------------------------------------------------------------------------------

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Hosts in different groups stop hearing each other (both ways); hosts in no group
        keep hearing everyone. Replaces any earlier partition and one-way block."""
        groups = [set(g) for g in groups]
        for rules in self._rules.values():
            rules.blocked.clear()
        for a in groups:
            for b in groups:
                if a is b:
                    continue
                for i in a:
                    self._rules[i].blocked |= {self.hosts[j].address for j in b}
        self._apply_all()

    def isolate(self, host: int) -> None:
        self.partition([[host], [i for i in range(len(self.hosts)) if i != host]])

    def bridge(self, left: Iterable[int], middle: int, right: Iterable[int]) -> None:
        """Two sides that each reach ``middle`` but not each other."""
        left, right = set(left), set(right)
        for rules in self._rules.values():
            rules.blocked.clear()
        for i in left:
            self._rules[i].blocked |= {self.hosts[j].address for j in right}
        for j in right:
            self._rules[j].blocked |= {self.hosts[i].address for i in left}
        self._apply_all()

    def block(self, src: int, dst: int) -> None:
        """Packets from ``src`` to ``dst`` are dropped (one way; adds to what is blocked)."""
        self._rules[dst].blocked.add(self.hosts[src].address)
        self._apply(dst)

    def loss(self, dst: int, percent: int, src: int | None = None) -> None:
        """Drop ``percent``% of the packets ``dst`` receives (from ``src``, or from anyone)."""
        if not 0 <= percent <= 100:
            raise ValueError("percent is 0 to 100")
        source = None if src is None else self.hosts[src].address
        if percent == 0:
            self._rules[dst].loss.pop(source, None)
        else:
            self._rules[dst].loss[source] = percent
        self._apply(dst)

    def heal(self) -> None:
        """Remove every drop and loss rule (netem delays are left as they are)."""
        for rules in self._rules.values():
            rules.blocked.clear()
            rules.loss.clear()
        self._apply_all()

    def netem(self, host: int, spec: Sequence[str]) -> None:
        """``tc qdisc replace ... netem <spec>`` on the host's link, e.g. ``["delay", "50ms",
        "10ms", "loss", "1%"]``. NetnsError where the kernel has no netem (see
        :func:`netem_available`; use :mod:`.relay` there)."""
        h = self.hosts[host]
        argv = ["tc", "-n", h.namespace, "qdisc", "replace", "dev", h.veth, "root", "netem"]
        _run([*argv, *spec])
        self.delay_mode = "netem"

    def rules(self, host: int) -> str:
        """The host's nftables rules as the kernel holds them (for reports and tests)."""
        return self.run(host, ["nft", "list", "table", "inet", NFT_TABLE])

    def _apply_all(self) -> None:
        for i in self._rules:
            self._apply(i)

    def _apply(self, host: int) -> None:
        # One transaction per host: delete our table (if any) and load it again, atomically.
        script = (
            f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n" + self._rules[host].render()
        )
        _run(self.command(host, ["nft", "-f", "-"]), stdin=script)


class Flapper:
    """Applies ``fault`` and heals on a period from a background thread, ``up_s`` healed then
    ``down_s`` faulty, until stopped; the net is healed when it stops."""

    def __init__(self, net: TestNet, fault: Any, down_s: float, up_s: float) -> None:
        self._net = net
        self._fault = fault
        self._down_s, self._up_s = down_s, up_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="flapper", daemon=True)
        self.flaps = 0
        self.error: BaseException | None = None

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self._up_s):
                self._fault(self._net)
                self.flaps += 1
                if self._stop.wait(self._down_s):
                    break
                self._net.heal()
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            self._net.heal()

    def start(self) -> Flapper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self.error is not None:
            raise NetnsError(f"the flapper failed: {self.error}") from self.error


@contextmanager
def flapping(net: TestNet, fault: Any, down_s: float, up_s: float) -> Iterator[Flapper]:
    flapper = Flapper(net, fault, down_s, up_s).start()
    try:
        yield flapper
    finally:
        flapper.stop()
