"""Test hosts in network namespaces: partitions really block TCP and heal, a one-way drop blocks
one direction only, loss drops, the bridge topology, flapping, the delaying relay inside the
namespaces, netem detection, and cleanup. Skips (with the reason) where namespaces cannot be
made: not root, or ``ip netns add`` refused."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.adversary.netns import (
    TestNet,
    ensure_nftables,
    flapping,
    netem_available,
    unavailable_reason,
)

ROOT = Path(__file__).resolve().parents[2]
REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))

ECHO_PORT = 7311
UDP_PORT = 7312
PY = [sys.executable, "-m", "tests.chaos.net_tools"]


@pytest.fixture(scope="module", autouse=True)
def nftables() -> None:
    # Installed from Debian on first use (root); a machine that cannot install it skips.
    reason = ensure_nftables()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def net(nftables: None) -> Iterator[TestNet]:
    with TestNet(3) as made:
        for host in range(3):
            echo = made.spawn(host, [*PY, "echo", str(ECHO_PORT)], cwd=ROOT, stdout=subprocess.PIPE)
            assert echo.stdout is not None and echo.stdout.readline().strip() == b"listening"
        yield made


@pytest.fixture(autouse=True)
def healed(net: TestNet) -> Iterator[None]:
    net.heal()
    yield
    net.heal()


def tcp(net: TestNet, src: int, dst: int, timeout: float = 0.5) -> bool:
    # 0.5 s: a connect inside one bridge takes well under a millisecond when not blocked.
    out = net.run(src, [*PY, "tcp", net.hosts[dst].address, str(ECHO_PORT), str(timeout)])
    return out.startswith("ok")


def udp_received(net: TestNet, src: int, dst: int, count: int = 20) -> int:
    receiver = net.spawn(
        dst, [*PY, "udp-recv", str(UDP_PORT), "1.0"], cwd=ROOT, stdout=subprocess.PIPE
    )
    assert receiver.stdout is not None and receiver.stdout.readline().strip() == b"listening"
    net.run(src, [*PY, "udp-send", net.hosts[dst].address, str(UDP_PORT), str(count)])
    out, _ = receiver.communicate(timeout=30)
    return int(out)


def test_hosts_have_their_own_addresses(net: TestNet) -> None:
    assert len({h.address for h in net.hosts}) == 3
    for host in net.hosts:
        assert host.address in net.run(host.index, ["ip", "-4", "addr", "show", host.veth])
    assert all(tcp(net, a, b) for a in range(3) for b in range(3) if a != b)


def test_partition_blocks_tcp_and_heals(net: TestNet) -> None:
    net.partition([[0], [1, 2]])
    assert not tcp(net, 0, 1) and not tcp(net, 1, 0) and not tcp(net, 2, 0)
    assert tcp(net, 1, 2)
    net.heal()
    assert tcp(net, 0, 1) and tcp(net, 1, 0)


def test_isolate_one_host(net: TestNet) -> None:
    net.isolate(2)
    assert not tcp(net, 0, 2) and not tcp(net, 2, 1)
    assert tcp(net, 0, 1)


def test_one_way_drop_blocks_one_direction(net: TestNet) -> None:
    net.block(0, 1)
    assert udp_received(net, 0, 1) == 0
    assert udp_received(net, 1, 0) == 20
    assert "ip saddr" in net.rules(1) and "ip saddr" not in net.rules(0)


def test_loss(net: TestNet) -> None:
    net.loss(1, 100, src=0)
    assert udp_received(net, 0, 1) == 0
    net.loss(1, 50)
    received = udp_received(net, 2, 1, count=200)
    assert 40 <= received <= 160  # ~100 expected; bounds far beyond random variation
    assert "numgen random mod 100" in net.rules(1)


def test_bridge_topology(net: TestNet) -> None:
    net.bridge(left=[0], middle=1, right=[2])
    assert tcp(net, 0, 1) and tcp(net, 1, 2) and tcp(net, 2, 1)
    assert not tcp(net, 0, 2) and not tcp(net, 2, 0)


def test_flapping_link(net: TestNet) -> None:
    with flapping(net, lambda n: n.isolate(0), down_s=0.4, up_s=0.2) as flapper:
        deadline = time.monotonic() + 3.0
        seen: set[bool] = set()
        while time.monotonic() < deadline and len(seen) < 2:
            seen.add(tcp(net, 1, 0, timeout=0.3))
    assert seen == {True, False} and flapper.flaps >= 1
    assert tcp(net, 1, 0)  # healed when the flapper stopped


def test_relay_in_a_namespace_delays_and_obeys_partitions(net: TestNet) -> None:
    relay_port = 7313
    relay = net.spawn(
        0,
        [
            sys.executable, "-m", "tests.adversary.relay", "--listen", f"127.0.0.1:{relay_port}",
            "--target", f"{net.hosts[1].address}:{ECHO_PORT}", "--delay-ms", "80",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert relay.stdout is not None and b"relay listening" in relay.stdout.readline()
    net.delay_mode = "netem" if net.delay_mode == "netem" else "relay"
    out = net.run(0, [*PY, "tcp", "127.0.0.1", str(relay_port), "5"])
    assert out.startswith("ok"), out
    assert float(out.split()[1]) >= 160  # 80 ms each way, measured
    direct = net.run(0, [*PY, "tcp", net.hosts[1].address, str(ECHO_PORT), "5"])
    assert float(direct.split()[1]) < 80
    # What the relay forwards leaves from host 0's address: a partition cuts it too.
    net.partition([[0], [1]])
    assert net.run(0, [*PY, "tcp", "127.0.0.1", str(relay_port), "1"]).startswith("fail")
    relay.kill()


def test_netem_detected_and_used_when_present(net: TestNet) -> None:
    if not netem_available():
        pytest.skip(
            "this kernel has no netem qdisc: delays use tests.adversary.relay (see the test above)"
        )
    net.netem(2, ["delay", "50ms"])
    try:
        out = net.run(0, [*PY, "tcp", net.hosts[2].address, str(ECHO_PORT), "5"])
        assert float(out.split()[1]) >= 50 and net.delay_mode == "netem"
    finally:
        net.run(2, ["tc", "qdisc", "del", "dev", net.hosts[2].veth, "root"])


def test_everything_is_removed() -> None:
    with TestNet(2) as made:
        prefix = made.prefix
        made.spawn(0, ["sleep", "600"])
        assert (
            prefix in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        )
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "link", "show"], capture_output=True, text=True).stdout
    assert prefix not in namespaces and prefix not in links


def test_cleanup_after_a_failure() -> None:
    prefix = ""
    with pytest.raises(RuntimeError, match="boom"), TestNet(1) as made:
        prefix = made.prefix
        raise RuntimeError("boom")
    assert (
        prefix
        and prefix not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
    )
