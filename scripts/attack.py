"""scripts/attack: attack a fresh 4-node testnet on 127.0.0.1 and show honest clients still commit.

For each attack of issue 10 it measures, on the attacked node (node0), in three phases of
``--phase`` seconds (before, during, after the attack):
- honest commits/s: an honest client submits ``--rate`` transactions per second through node0's
  HTTP API; a transaction counts when node2 reports its block on ``/v1/events``;
- node0's peak RSS (MiB) and CPU (% of one core) from /proc;
- node0's log growth (bytes) during the attack.
It prints one table row per attack on stdout (``--json`` for JSON lines) and a note per attack
on what the node did (refusals, penalties, 429s...) from its metrics. Everything runs on
127.0.0.1 (attackers also bind other 127.0.0.x addresses, i.e. other hosts) and every attack
stops after its phase: about 3 x phase x attacks seconds in all.

Attacks (names for ``--only``):
  reflect         relay each node's handshake bytes to another, claiming to be it (the critical
                  impersonation of the review), on all 6 pairs, over and over
  idle-peers      300 idle TCP sockets per peer port from another host, renewed as they close
  plaintext       old-protocol hellos with 100 KB strings, and frames of a million ``{}``, sent
                  in the clear to every peer port (log and CPU pressure)
  byz-frames      a faulty validator (node3's key; node3 is stopped) sends 8 MiB frames of
                  ``{}`` and badly signed COMMITs to node0 over a valid TLS link
  byz-relay       the faulty validator floods node0 with relays of badly signed transactions
  http-body       4 clients POST 1 MiB bodies of ``[{},{},...]`` to /v1/txs
  http-badsig     8 clients POST 1,000 badly signed transactions per request
  http-idle       3,000 idle HTTP connections to node0 (and more as they are closed)
  http-longline   8 KB request lines and headers, as fast as one client can
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from crypto.keys import load_private_key
from crypto.signing import Ed25519Signer
from node.client import make_tx
from node.p2p.framing import encode_frame
from node.p2p.tls import LinkTls

PEER_OFFSET = 100


@dataclass
class Net:
    dir: Path
    base: int
    chain_id: str
    genesis_hash: str
    keys: list[str]
    client: Ed25519Signer

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.base + i}"

    def peer(self, i: int) -> tuple[str, int]:
        return ("127.0.0.1", self.base + PEER_OFFSET + i)

    def pid(self, i: int) -> int | None:
        data = json.loads((self.dir / "testnet.json").read_text())
        pid = data["nodes"][i].get("pid")
        return int(pid) if pid else None

    def log(self, i: int) -> Path:
        return self.dir / f"node{i}" / "node.log"

    def signer(self, i: int) -> Ed25519Signer:
        return load_private_key(self.dir / f"node{i}" / "node.key")


def phalanx(*args: str) -> str:
    cmd = [sys.executable, "-m", "node.cli", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=180).stdout


def testnet_up(dir: Path, base: int) -> Net:
    phalanx("testnet", "up", "--nodes", "4", "--dir", str(dir), "--base-port", str(base))
    return load_net(dir, base)


def load_net(dir: Path, base: int) -> Net:
    data = json.loads((dir / "testnet.json").read_text())
    genesis = json.loads(Path(data["genesis"]).read_text())
    from ledger.genesis import load_genesis

    g = load_genesis(Path(data["genesis"]))
    client = Ed25519Signer(bytes.fromhex((dir / "client.key").read_text().strip()))
    return Net(
        dir, base, genesis["chain_id"], g.genesis_hash, [n["pubkey"] for n in data["nodes"]], client
    )


# ---- measurement -------------------------------------------------------------------------------


class Honest:
    """An honest client: ``rate`` tx/s into node0; commits counted from node2's event stream."""

    def __init__(self, net: Net, rate: float) -> None:
        self.net = net
        self.rate = rate
        self.sent: set[str] = set()
        self.committed: list[float] = []  # monotonic times of honest commits
        self.errors = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, session: aiohttp.ClientSession) -> None:
        self._tasks = [
            asyncio.ensure_future(self._watch(session)),
            asyncio.ensure_future(self._submit(session)),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def rate_between(self, start: float, end: float) -> float:
        return sum(1 for t in self.committed if start <= t < end) / max(end - start, 1e-9)

    async def _submit(self, session: aiohttp.ClientSession) -> None:
        batch = 10
        interval = batch / self.rate
        while True:
            started = time.monotonic()
            txs = [
                make_tx(
                    self.net.client,
                    [{"op": "set", "key": "honest", "value": 1}],
                    chain_id=self.net.chain_id,
                )
                for _ in range(batch)
            ]
            try:
                async with session.post(
                    f"{self.net.url(0)}/v1/txs", json=txs, timeout=aiohttp.ClientTimeout(total=5)
                ) as response:
                    answer = await response.json(content_type=None)
                    if response.status == 202:
                        for item in answer:
                            if "tx_id" in item:
                                self.sent.add(item["tx_id"])
                    else:
                        self.errors += 1
            except (aiohttp.ClientError, TimeoutError, ValueError):
                self.errors += 1
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def _watch(self, session: aiohttp.ClientSession) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with session.get(
                    f"{self.net.url(2)}/v1/events", timeout=aiohttp.ClientTimeout(total=None)
                ) as response:
                    async for line in response.content:
                        if line.startswith(b"data: "):
                            event = json.loads(line[6:])
                            now = time.monotonic()
                            for tx_id in event["tx_ids"]:
                                if tx_id in self.sent:
                                    self.committed.append(now)
            await asyncio.sleep(0.2)


class ProcWatch:
    """Peak RSS and CPU share of one process, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float, float]] = []  # (time, rss MiB, cpu seconds)
        self._task: asyncio.Task[None] | None = None

    def _read(self) -> tuple[float, float] | None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        rss_kb = next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")
        )
        ticks = os.sysconf("SC_CLK_TCK")
        return rss_kb / 1024, (int(stat[11]) + int(stat[12])) / ticks

    async def run(self) -> None:
        while True:
            sample = self._read()
            if sample is not None:
                self.samples.append((time.monotonic(), *sample))
            await asyncio.sleep(0.2)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def between(self, start: float, end: float) -> tuple[float, float]:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return 0.0, 0.0
        rss = max(s[1] for s in inside)
        cpu = (inside[-1][2] - inside[0][2]) / (inside[-1][0] - inside[0][0]) * 100
        return rss, cpu


# ---- attacks -----------------------------------------------------------------------------------

Attack = Callable[[Net, asyncio.Event], Awaitable[None]]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def attack_reflect(net: Net, stop: asyncio.Event) -> None:
    pairs = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    while not stop.is_set():
        for a, b in pairs:
            with contextlib.suppress(OSError):
                ra, wa = await asyncio.open_connection(*net.peer(a))
                rb, wb = await asyncio.open_connection(*net.peer(b))
                wa.write(
                    encode_frame({"type": "hello", "chain_id": net.chain_id, "pubkey": net.keys[b]})
                )
                wb.write(
                    encode_frame({"type": "hello", "chain_id": net.chain_id, "pubkey": net.keys[a]})
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.gather(_pipe(ra, wb), _pipe(rb, wa)), 2)
                wa.close()
                wb.close()
        await asyncio.sleep(0.05)


async def attack_idle_peers(net: Net, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    sockets: list[socket.socket] = []
    try:
        while not stop.is_set():
            alive = []
            for s in sockets:
                try:
                    if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                        s.close()
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    s.close()
                    continue
                alive.append(s)
            sockets = alive
            for i in range(4):
                for _ in range(
                    max(0, 300 - sum(1 for s in sockets if s.getpeername()[1] == net.peer(i)[1]))
                ):
                    s = socket.socket()
                    s.setblocking(False)
                    s.bind(("127.0.0.2", 0))
                    try:
                        await asyncio.wait_for(loop.sock_connect(s, net.peer(i)), 1)
                    except (OSError, TimeoutError):
                        s.close()
                        continue
                    sockets.append(s)
            await asyncio.sleep(0.2)
    finally:
        for s in sockets:
            s.close()


async def attack_plaintext(net: Net, stop: asyncio.Event) -> None:
    junk_hello = encode_frame(
        {
            "type": "hello",
            "chain_id": "x" * 100_000,
            "genesis_hash": "y" * 100_000,
            "pubkey": net.keys[1],
            "challenge": "00" * 32,
        },
        frame_max=1 << 24,
    )
    payload = b"[" + b",".join([b"{}"] * 1_000_000) + b"]"
    braces = struct.pack(">I", len(payload)) + payload
    while not stop.is_set():
        for i in range(4):
            for data in (junk_hello, braces):
                with contextlib.suppress(OSError, TimeoutError):
                    _, w = await asyncio.wait_for(asyncio.open_connection(*net.peer(i)), 1)
                    w.write(data)
                    with contextlib.suppress(OSError, TimeoutError):
                        await asyncio.wait_for(w.drain(), 1)
                    w.close()
        await asyncio.sleep(0.01)


async def _validator_link(
    net: Net, me: int, to: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    signer = net.signer(me)
    tls = LinkTls(signer.seed, signer.public_key, net.keys)
    reader, writer = await asyncio.open_connection(
        *net.peer(to), ssl=tls.client(net.keys[to]), server_hostname=""
    )
    writer.write(
        encode_frame(
            {
                "type": "hello",
                "chain_id": net.chain_id,
                "genesis_hash": net.genesis_hash,
                "instance": os.urandom(16).hex(),
            }
        )
    )
    await writer.drain()
    return reader, writer


async def _as_faulty_validator(
    net: Net, stop: asyncio.Event, frames: Callable[[], list[list[bytes]]]
) -> None:
    rounds = frames()  # before node3 stops: the attack starts the moment it is down
    attempt = 0
    phalanx("testnet", "kill", "node3", "--dir", str(net.dir))
    try:
        while not stop.is_set():
            try:
                _reader, writer = await asyncio.wait_for(_validator_link(net, 3, 0), 2)
            except (OSError, TimeoutError, ConnectionError):
                await asyncio.sleep(0.2)
                continue
            with contextlib.suppress(OSError, ConnectionError, TimeoutError):
                while not stop.is_set() and not writer.is_closing():
                    for blob in rounds[attempt % len(rounds)]:
                        writer.write(blob)
                    await asyncio.wait_for(writer.drain(), 2)
            writer.close()
            attempt += 1
            await asyncio.sleep(0.1)
    finally:
        phalanx("testnet", "start", "node3", "--dir", str(net.dir))


async def attack_byz_frames(net: Net, stop: asyncio.Event) -> None:
    def frames() -> list[list[bytes]]:
        # An object (so it is not refused as a non-object at once), spaced (no fast path).
        payload = b'{"a": [' + b", ".join([b"{}"] * 2_000_000) + b"]}"
        braces = struct.pack(">I", len(payload)) + payload
        status = json.loads(urllib.request.urlopen(f"{net.url(0)}/v1/status", timeout=5).read())
        # Inside the watermarks of the current view: the node must check each signature.
        commits = [
            encode_frame(
                {
                    "type": "commit",
                    "chain_id": net.chain_id,
                    "view": status["view"],
                    "seq": status["seq"] + 1 + k % 100,
                    "digest": "ab" * 32,
                    "sender": net.keys[3],
                    "signature": "cd" * 64,
                }
            )
            for k in range(2000)
        ]
        return [[braces], commits]  # one link: the expensive frame, the next: bad signatures

    await _as_faulty_validator(net, stop, frames)


async def attack_byz_relay(net: Net, stop: asyncio.Event) -> None:
    def frames() -> list[list[bytes]]:
        bad = []
        for k in range(500):
            tx = make_tx(
                net.client, [{"op": "set", "key": f"r{k}", "value": k}], chain_id=net.chain_id
            )
            tx["sig"] = "00" * 64
            bad.append(tx)
        return [[encode_frame({"type": "relay-txs", "txs": bad})] * 20]

    await _as_faulty_validator(net, stop, frames)


async def _http_flood(net: Net, stop: asyncio.Event, clients: int, body: bytes, path: str) -> None:
    async def one(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.post(
                    f"{net.url(0)}{path}",
                    data=body,
                    headers={"Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as response:
                    await response.read()
            await asyncio.sleep(0)

    # From another host than the honest client (127.0.0.1): per-address limits apply to it.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0), limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(session) for _ in range(clients)))


async def attack_http_body(net: Net, stop: asyncio.Event) -> None:
    body = b"[" + b",".join([b"{}"] * 340_000) + b"]"  # just under 1 MiB
    await _http_flood(net, stop, 4, body, "/v1/txs")


async def attack_http_badsig(net: Net, stop: asyncio.Event) -> None:
    signer = Ed25519Signer.generate()
    txs = []
    for k in range(1000):
        tx = make_tx(signer, [{"op": "set", "key": f"b{k}", "value": k}], chain_id=net.chain_id)
        tx["sig"] = "11" * 64
        txs.append(tx)
    await _http_flood(net, stop, 8, json.dumps(txs).encode(), "/v1/txs")


async def attack_http_idle(net: Net, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    sockets: list[socket.socket] = []
    host_octet = 3
    try:
        while not stop.is_set():
            sockets = [s for s in sockets if s.fileno() >= 0]
            for _ in range(max(0, 3000 - len(sockets))):
                s = socket.socket()
                s.setblocking(False)
                # Spread over many "hosts": a per-address cap alone would be too easy.
                s.bind((f"127.0.0.{host_octet}", 0))
                host_octet = 3 + (host_octet - 2) % 200
                try:
                    await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", net.base)), 1)
                except (OSError, TimeoutError):
                    s.close()
                    continue
                sockets.append(s)
                if stop.is_set():
                    break
            await asyncio.sleep(0.5)
    finally:
        for s in sockets:
            s.close()


async def attack_http_longline(net: Net, stop: asyncio.Event) -> None:
    request = (
        b"GET /v1/status?"
        + b"a" * 8200
        + b" HTTP/1.1\r\nHost: x\r\nX-Junk: "
        + b"b" * 9000
        + b"\r\n\r\n"
    )
    while not stop.is_set():
        with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", net.base), 1)
            w.write(request)
            await asyncio.wait_for(r.read(4096), 2)
            w.close()


FAULTY_VALIDATOR_ATTACKS = ("byz-frames", "byz-relay")  # both use node3's key

ATTACKS: dict[str, Attack] = {
    "reflect": attack_reflect,
    "idle-peers": attack_idle_peers,
    "plaintext": attack_plaintext,
    "byz-frames": attack_byz_frames,
    "byz-relay": attack_byz_relay,
    "http-body": attack_http_body,
    "http-badsig": attack_http_badsig,
    "http-idle": attack_http_idle,
    "http-longline": attack_http_longline,
}


# ---- running -----------------------------------------------------------------------------------


@dataclass
class Row:
    attack: str
    before: float
    during: float
    after: float
    rss_mib: float
    cpu_pct: float
    log_bytes: int
    notes: dict[str, float] = field(default_factory=dict)


async def _metrics(net: Net) -> dict[str, float]:
    wanted = (
        "phalanx_peer_links_refused_total",
        "phalanx_peer_penalties_total",
        "phalanx_http_connections_refused_total",
        "phalanx_http_requests_limited_total",
        "phalanx_peer_pending_evicted_total",
        "phalanx_dropped_peer_messages_total",
    )
    out: dict[str, float] = {}
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{net.url(0)}/metrics", timeout=aiohttp.ClientTimeout(total=10)
            ) as response,
        ):
            for line in (await response.text()).splitlines():
                if line.startswith(wanted):
                    name, value = line.rsplit(" ", 1)
                    out[name] = float(value)
    return out


async def _restart_node0(net: Net) -> None:
    """Restart node0 and wait until it has the others' head again."""
    phalanx("testnet", "kill", "node0", "--dir", str(net.dir))
    phalanx("testnet", "start", "node0", "--dir", str(net.dir))
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                seqs = []
                for i in (0, 1):
                    async with session.get(f"{net.url(i)}/v1/status") as response:
                        seqs.append((await response.json())["seq"])
                if seqs[0] >= seqs[1]:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError("node0 did not catch up within 60 s of its restart")


async def run_attack(net: Net, name: str, phase: float, rate: float) -> Row:
    if name in FAULTY_VALIDATOR_ATTACKS:
        # node0 keeps a penalised validator key away for a back-off that doubles per offence
        # (up to a minute): an earlier attack's ban would hide what cuts this one off.
        await _restart_node0(net)
    pid = net.pid(0)
    assert pid is not None, "node0 is not running"
    watch = ProcWatch(pid)
    honest = Honest(net, rate)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as session:
        await honest.start(session)
        watch.start()
        await asyncio.sleep(1.0)  # the honest client gets going
        t0 = time.monotonic()
        await asyncio.sleep(phase)
        before_metrics = await _metrics(net)
        log_before = net.log(0).stat().st_size
        t1 = time.monotonic()
        # The attacker is a process of its own: its work does not slow the honest client.
        attacker = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--attacker",
            name,
            "--dir",
            str(net.dir),
            "--base-port",
            str(net.base),
            "--phase",
            str(phase),
        )
        await asyncio.sleep(phase)
        t2 = time.monotonic()
        try:
            await asyncio.wait_for(attacker.wait(), 60)
        except TimeoutError:
            attacker.kill()
            await attacker.wait()
        log_growth = net.log(0).stat().st_size - log_before
        t3 = time.monotonic()
        await asyncio.sleep(phase)
        t4 = time.monotonic()
        after_metrics = await _metrics(net)
        await honest.stop()
        await watch.stop()
    rss, cpu = watch.between(t1, t2)
    notes = {
        k: after_metrics[k] - before_metrics.get(k, 0.0)
        for k in after_metrics
        if after_metrics[k] - before_metrics.get(k, 0.0) > 0
    }
    return Row(
        name,
        honest.rate_between(t0, t1),
        honest.rate_between(t1, t2),
        honest.rate_between(t3, t4),
        round(rss, 1),
        round(cpu, 1),
        log_growth,
        notes,
    )


def print_row(row: Row, as_json: bool) -> None:
    if as_json:
        print(json.dumps(asdict(row)), flush=True)
        return
    print(
        f"{row.attack:<14} {row.before:>8.1f} {row.during:>8.1f} {row.after:>8.1f} "
        f"{row.rss_mib:>8.1f} {row.cpu_pct:>7.1f} {row.log_bytes:>10}",
        flush=True,
    )
    for name, delta in sorted(row.notes.items()):
        print(f"{'':14}   {name} +{delta:g}", file=sys.stderr, flush=True)


async def attacker_main(args: argparse.Namespace) -> int:
    """Child process: run one attack for ``--phase`` seconds against the testnet in ``--dir``."""
    net = load_net(Path(args.dir), args.base_port)
    # The attacker writes to sockets the node closed on it: that is expected, not news.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(args.phase, stop.set)
    task = asyncio.ensure_future(ATTACKS[args.attacker](net, stop))
    await stop.wait()
    try:
        await asyncio.wait_for(task, 30)
    except TimeoutError:
        print(f"attack: {args.attacker} did not stop in time", file=sys.stderr)
        return 1
    return 0


async def main_async(args: argparse.Namespace) -> int:
    if args.attacker:
        return await attacker_main(args)
    names = args.only or list(ATTACKS)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        print(f"attack: unknown attack(s) {unknown}; known: {', '.join(ATTACKS)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="phalanx-attack-") as tmp:
        net = testnet_up(Path(tmp), args.base_port)
        try:
            if not args.json:
                print(
                    f"{'attack':<14} {'before':>8} {'during':>8} {'after':>8} "
                    f"{'rss_MiB':>8} {'cpu_%':>7} {'log_bytes':>10}"
                )
                print(f"{'':14} {'(honest commits/s, node0)':>26}  {'(node0, during)':>27}")
            failed = False
            for name in names:
                row = await run_attack(net, name, args.phase, args.rate)
                print_row(row, args.json)
                if (
                    row.during < args.min_ratio * row.before
                    or row.after < args.min_ratio * row.before
                ):
                    failed = True
            return 1 if failed and args.check else 0
        finally:
            with contextlib.suppress(Exception):
                phalanx("testnet", "down", "--dir", tmp)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="attacks to run (default: all)")
    parser.add_argument("--phase", type=float, default=8.0, help="seconds per phase (3 phases)")
    parser.add_argument("--rate", type=float, default=100.0, help="honest tx/s offered to node0")
    parser.add_argument("--base-port", type=int, default=18300)
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if honest commits/s during or after fall below --min-ratio of before",
    )
    parser.add_argument("--min-ratio", type=float, default=0.5)
    parser.add_argument("--attacker", help=argparse.SUPPRESS)  # child process: one attack
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
