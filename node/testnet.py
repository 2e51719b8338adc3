"""A local testnet: keys, genesis, one config per node, and the node processes (spec section 7).

Layout of ``DIR`` (default ``./testnet``)::

    DIR/genesis.json           chain_id "phalanx-testnet-<16 random hex>" (or --chain-id),
                               validators node0..node{N-1}, fee_per_byte 1
    DIR/client.key             the demo client's seed (64 hex chars), funded in the genesis
                               with 10^15 (enough for billions of small transactions)
    DIR/client1.key ..3.key    three more funded demo clients
    DIR/testnet.json           {"genesis", "nodes": [{"name", "pubkey", "url", "data_dir", "pid"}]}
    DIR/nodeI/node.key         the validator's key (0600)
    DIR/nodeI/config.json      its node config (see node/config.py)
    DIR/nodeI/data/            its ledger
    DIR/nodeI/node.log         its stdout and stderr (appended across restarts)

Ports: node I serves HTTP on ``base_port + I`` and peers on ``base_port + 100 + I``, all on
127.0.0.1 (base port 7000 by default, so at most 100 nodes).

Keys and genesis are created once and reused; configs are rewritten by every ``up``. Nodes run
``<python> -m node.cli node run --config DIR/nodeI/config.json`` in a session of their own, so
they outlive the command that started them. For tests, the environment variable
``PHALANX_TESTNET_NODE_CMD`` replaces ``<python> -m node.cli node run`` (split like a shell
would; ``--config FILE`` is appended).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from crypto.keys import KeyFileError, load_private_key, save_private_key
from crypto.signing import Ed25519Signer
from ledger.genesis import GenesisError, check_chain_id, new_chain_id
from node.config import NodeConfig

CHAIN_ID_PREFIX = "phalanx-testnet"  # + a random suffix: every new testnet is its own chain
DEFAULT_DIR = Path("testnet")
DEFAULT_NODES = 4
DEFAULT_BASE_PORT = 7000
PEER_PORT_OFFSET = 100
HOST = "127.0.0.1"
CLIENT_KEYS = ("client.key", "client1.key", "client2.key", "client3.key")
CLIENT_BALANCE = 10**15  # four of them stay below the genesis's 2^53 - 1 total
FEE_PER_BYTE = 1
NODE_CMD_ENV = "PHALANX_TESTNET_NODE_CMD"
READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0


class TestnetError(Exception):
    """The testnet cannot do what was asked; the message says why and what to do."""

    __test__ = False  # not a pytest test class, despite its name


@dataclass
class NodeEntry:
    name: str
    pubkey: str
    url: str
    data_dir: str
    pid: int | None = None


@dataclass
class Testnet:
    dir: Path
    genesis: Path
    nodes: list[NodeEntry]

    __test__ = False

    @classmethod
    def load(cls, dir: Path) -> Testnet:
        path = dir / "testnet.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            nodes = [NodeEntry(**node) for node in data["nodes"]]
            return cls(dir, Path(data["genesis"]), nodes)
        except FileNotFoundError:
            raise TestnetError(
                f"no testnet in {dir}: run `phalanx testnet up --dir {dir}`"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise TestnetError(
                f"{path} is damaged ({exc}); run `phalanx testnet up` again"
            ) from exc

    def save(self) -> None:
        data = {"genesis": str(self.genesis), "nodes": [asdict(node) for node in self.nodes]}
        path = self.dir / "testnet.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def node(self, name: str) -> NodeEntry:
        for node in self.nodes:
            if node.name == name:
                return node
        names = ", ".join(n.name for n in self.nodes)
        raise TestnetError(f"no node {name!r} in {self.dir} (nodes: {names})")

    def config_path(self, node: NodeEntry) -> Path:
        return self.dir / node.name / "config.json"

    def log_path(self, node: NodeEntry) -> Path:
        return self.dir / node.name / "node.log"


def http_port(base_port: int, index: int) -> int:
    return base_port + index


def peer_port(base_port: int, index: int) -> int:
    return base_port + PEER_PORT_OFFSET + index


# ---- creation -----------------------------------------------------------------------------------


def _key(path: Path) -> Ed25519Signer:
    """Load the key at ``path``, creating it first if absent."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_private_key(path, Ed25519Signer.generate())
    try:
        return load_private_key(path)
    except KeyFileError as exc:
        raise TestnetError(str(exc)) from exc


def _genesis(dir: Path, nodes: int | None, chain_id: str | None) -> dict[str, Any]:
    """Load DIR/genesis.json, or create it (and the keys it names) when absent."""
    path = dir / "genesis.json"
    if path.exists():
        genesis: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        count = len(genesis["validators"])
        if nodes is not None and nodes != count:
            raise TestnetError(
                f"{dir} already holds a testnet of {count} nodes; use --nodes {count} "
                "or another --dir"
            )
        if chain_id is not None and chain_id != genesis.get("chain_id"):
            raise TestnetError(
                f"{dir} already holds the testnet {genesis.get('chain_id')!r}; drop --chain-id "
                "or use another --dir"
            )
        return genesis
    try:
        chain_id = new_chain_id(CHAIN_ID_PREFIX) if chain_id is None else check_chain_id(chain_id)
    except GenesisError as exc:
        raise TestnetError(f"--chain-id: {exc}") from exc
    count = DEFAULT_NODES if nodes is None else nodes
    if not 1 <= count <= PEER_PORT_OFFSET:
        raise TestnetError(f"--nodes must be between 1 and {PEER_PORT_OFFSET}")
    validators = [
        {"name": f"node{i}", "pubkey": _key(dir / f"node{i}" / "node.key").public_key}
        for i in range(count)
    ]
    accounts = {_key(dir / name).public_key: CLIENT_BALANCE for name in CLIENT_KEYS}
    genesis = {
        "chain_id": chain_id,
        "validators": validators,
        "accounts": accounts,
        "fee_per_byte": FEE_PER_BYTE,
    }
    path.write_text(json.dumps(genesis, indent=2) + "\n", encoding="utf-8")
    return genesis


def _base_port_in_use(dir: Path) -> int | None:
    """The base port of the existing configs, if any."""
    try:
        config = json.loads((dir / "node0" / "config.json").read_text(encoding="utf-8"))
        return int(config["http_listen"].rsplit(":", 1)[1])
    except (OSError, ValueError, KeyError, IndexError):
        return None


def create(
    dir: Path,
    nodes: int | None = None,
    base_port: int | None = None,
    chain_id: str | None = None,
) -> Testnet:
    """Create keys and genesis (a new, unique chain_id unless ``chain_id`` is given) if absent
    and (re)write every node's config. Running nodes are kept, as long as their config does not
    change. Returns the testnet, pids as recorded."""
    dir = dir.resolve()
    dir.mkdir(parents=True, exist_ok=True)
    genesis = _genesis(dir, nodes, chain_id)
    if base_port is None:
        base_port = _base_port_in_use(dir) or DEFAULT_BASE_PORT
    count = len(genesis["validators"])
    if base_port < 1 or peer_port(base_port, count - 1) > 65535:
        raise TestnetError(f"--base-port {base_port} leaves no room for {count} nodes")
    old = _load_pids(dir)
    testnet = Testnet(dir, dir / "genesis.json", [])
    for i, validator in enumerate(genesis["validators"]):
        name, pubkey = validator["name"], validator["pubkey"]
        try:
            signer = load_private_key(dir / name / "node.key")
        except KeyFileError as exc:
            raise TestnetError(f"{name} of {dir / 'genesis.json'}: {exc}") from exc
        if signer.public_key != pubkey:
            raise TestnetError(f"{dir / name / 'node.key'} is not the key of {name} in the genesis")
        config = NodeConfig.model_validate(
            {
                "name": name,
                "key_file": dir / name / "node.key",
                "data_dir": dir / name / "data",
                "genesis_file": dir / "genesis.json",
                "peer_listen": f"{HOST}:{peer_port(base_port, i)}",
                "http_listen": f"{HOST}:{http_port(base_port, i)}",
                "peers": {
                    v["pubkey"]: f"{HOST}:{peer_port(base_port, j)}"
                    for j, v in enumerate(genesis["validators"])
                    if j != i
                },
            }
        )
        entry = NodeEntry(
            name, pubkey, f"http://{HOST}:{http_port(base_port, i)}", str(dir / name / "data")
        )
        config_path = testnet.config_path(entry)
        text = config.to_json() + "\n"
        pid = old.get(name)
        if pid is not None and is_running(pid, config_path):
            entry.pid = pid
            if config_path.read_text(encoding="utf-8") != text:
                raise TestnetError(
                    f"{name} is running with other settings; run `phalanx testnet down` first"
                )
        (dir / name / "data").mkdir(mode=0o700, parents=True, exist_ok=True)
        config_path.write_text(text, encoding="utf-8")
        testnet.nodes.append(entry)
    testnet.save()
    return testnet


def _load_pids(dir: Path) -> dict[str, int | None]:
    try:
        return {node.name: node.pid for node in Testnet.load(dir).nodes}
    except TestnetError:
        return {}


# ---- processes ----------------------------------------------------------------------------------


def node_command(config_path: Path) -> list[str]:
    """The command that runs one node; see ``PHALANX_TESTNET_NODE_CMD`` above."""
    override = os.environ.get(NODE_CMD_ENV)
    prefix = (
        shlex.split(override) if override else [sys.executable, "-m", "node.cli", "node", "run"]
    )
    return [*prefix, "--config", str(config_path)]


def spawn(testnet: Testnet, node: NodeEntry) -> int:
    """Start ``node`` in its own session, output appended to its node.log; records its pid."""
    command = node_command(testnet.config_path(node))
    log_fd = os.open(testnet.log_path(node), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        # posix_spawn rather than subprocess.Popen: the node must outlive this command, and a
        # Popen object that is never waited for would warn when collected.
        pid = os.posix_spawnp(
            command[0],
            command,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ],
            setsid=True,
        )
    except OSError as exc:
        raise TestnetError(f"cannot start {node.name} with {shlex.join(command)}: {exc}") from exc
    finally:
        os.close(log_fd)
    node.pid = pid
    return pid


def _reap(pid: int) -> int | None:
    """If ``pid`` is our child and has exited, collect it and return its wait status."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return status if done == pid else None


def is_running(pid: int, config_path: Path | None = None) -> bool:
    """True if ``pid`` is alive (not a zombie) and, where /proc tells, runs with ``config_path``
    (so a pid reused by another program after a reboot is not mistaken for a node)."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return config_path is None
    proc = Path("/proc") / str(pid)
    try:
        if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
        if config_path is not None:
            return str(config_path) in (proc / "cmdline").read_bytes().decode(
                errors="replace"
            ).split("\0")
    except (OSError, IndexError):
        pass
    return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the node leads its own session: this reaches its children too
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """Wait until the processes are gone; returns those still alive after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    alive = list(pids)
    while alive:
        alive = [pid for pid in alive if is_running(pid)]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return alive


def fetch_status(url: str, timeout_s: float = 1.0) -> dict[str, Any] | None:
    """GET URL/v1/status; None if the node does not answer with a JSON object."""
    try:
        with urllib.request.urlopen(f"{url}/v1/status", timeout=timeout_s) as response:
            data = json.loads(response.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (log is empty)"


def wait_ready(
    testnet: Testnet, nodes: list[NodeEntry], timeout_s: float = READY_TIMEOUT_S
) -> None:
    """Wait until each node answers /v1/status with its own pubkey. Nodes that die or stay
    silent raise one :class:`TestnetError` naming every one of them, with its log's tail."""
    deadline = time.monotonic() + timeout_s
    pending = list(nodes)
    errors: list[str] = []
    while pending:
        for node in list(pending):
            assert node.pid is not None
            status = _reap(node.pid)
            if status is not None or not is_running(node.pid):
                code = (
                    f" with status {os.waitstatus_to_exitcode(status)}"
                    if status is not None
                    else ""
                )
                node.pid = None
                testnet.save()
                log = testnet.log_path(node)
                errors.append(
                    f"{node.name} exited{code} before answering /v1/status; see {log}:\n"
                    + _log_tail(log, lines=4)
                )
                pending.remove(node)
                continue
            answer = fetch_status(node.url, timeout_s=0.5)
            if answer is not None:
                if answer.get("pubkey") != node.pubkey:
                    errors.append(
                        f"{node.url} answers as {answer.get('pubkey')!r}, not {node.name}: "
                        "is another program using the port? Try another --base-port"
                    )
                pending.remove(node)
        if pending and time.monotonic() > deadline:
            errors += [
                f"{n.name}: no answer from /v1/status within {timeout_s:g} s "
                f"(see {testnet.log_path(n)})"
                for n in pending
            ]
            break
        if pending:
            time.sleep(0.1)
    if errors:
        raise TestnetError("\n".join(errors))


# ---- commands -----------------------------------------------------------------------------------


def up(
    dir: Path = DEFAULT_DIR,
    nodes: int | None = None,
    base_port: int | None = None,
    timeout_s: float = READY_TIMEOUT_S,
    chain_id: str | None = None,
) -> Testnet:
    """Create what is missing, start every node that is not running, wait until all answer."""
    testnet = create(dir, nodes, base_port, chain_id)
    started = [node for node in testnet.nodes if node.pid is None]
    _check_ports_free(testnet, started)
    try:
        for node in started:
            spawn(testnet, node)
        testnet.save()  # pids are on record before waiting, so `down` works if waiting fails
        wait_ready(testnet, testnet.nodes, timeout_s)
    except TestnetError as exc:
        # Leave nothing half up: stop every node this command started (not those that were
        # already running), then report every node's error.
        stopped = _stop(testnet, started)
        note = f"\nstopped the nodes this command started: {', '.join(stopped)}" if stopped else ""
        raise TestnetError(f"{exc}{note}") from exc
    return testnet


def _check_ports_free(testnet: Testnet, nodes: list[NodeEntry]) -> None:
    """One line per busy port of the nodes about to start, before starting any."""
    busy = []
    for node in nodes:
        config = json.loads(testnet.config_path(node).read_text(encoding="utf-8"))
        for what, address in (("HTTP", config["http_listen"]), ("peer", config["peer_listen"])):
            host, _, port = str(address).rpartition(":")
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((host.strip("[]"), int(port)))
                except OSError:
                    busy.append(f"{address} ({node.name} {what})")
    if busy:
        raise TestnetError(
            f"port(s) already in use: {', '.join(busy)}; stop what uses them (another testnet? "
            "`phalanx testnet down --dir ...`) or choose another --base-port"
        )


def _stop(testnet: Testnet, nodes: list[NodeEntry]) -> list[str]:
    pids = {node.pid: node for node in nodes if node.pid is not None and is_running(node.pid)}
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    for pid in _wait_gone(list(pids), STOP_GRACE_S):
        _signal(pid, signal.SIGKILL)
    _wait_gone(list(pids), 5.0)
    for node in nodes:
        node.pid = None
    testnet.save()
    return [node.name for node in pids.values()]


def down(dir: Path = DEFAULT_DIR, grace_s: float = STOP_GRACE_S) -> list[tuple[str, str]]:
    """SIGTERM every running node, SIGKILL those still alive after ``grace_s``. Returns
    ``(name, what happened)`` per node."""
    testnet = Testnet.load(dir.resolve())
    outcome: dict[str, str] = {}
    running: dict[int, NodeEntry] = {}
    for node in testnet.nodes:
        if node.pid is not None and is_running(node.pid, testnet.config_path(node)):
            _signal(node.pid, signal.SIGTERM)
            running[node.pid] = node
        else:
            outcome[node.name] = "not running"
        node.pid = None
    for pid in _wait_gone(list(running), grace_s):
        _signal(pid, signal.SIGKILL)
        outcome[running[pid].name] = "killed after the grace period"
    _wait_gone(list(running), 5.0)
    for node in running.values():
        outcome.setdefault(node.name, "stopped")
    testnet.save()
    return [(node.name, outcome[node.name]) for node in testnet.nodes]


def kill(dir: Path, name: str) -> bool:
    """SIGKILL one node (as a crash would). Returns False if it was not running."""
    testnet = Testnet.load(dir.resolve())
    node = testnet.node(name)
    was_running = node.pid is not None and is_running(node.pid, testnet.config_path(node))
    if was_running:
        assert node.pid is not None
        _signal(node.pid, signal.SIGKILL)
        _wait_gone([node.pid], 5.0)
    node.pid = None
    testnet.save()
    return was_running


def start(dir: Path, name: str, timeout_s: float = READY_TIMEOUT_S) -> tuple[NodeEntry, bool]:
    """Start one node if it is not running and wait until it answers. Returns the node and
    whether it had to be started."""
    testnet = Testnet.load(dir.resolve())
    node = testnet.node(name)
    if node.pid is not None and is_running(node.pid, testnet.config_path(node)):
        return node, False
    spawn(testnet, node)
    testnet.save()
    wait_ready(testnet, [node], timeout_s)
    return node, True


def status(dir: Path = DEFAULT_DIR) -> list[tuple[NodeEntry, str, dict[str, Any] | None]]:
    """Per node: the entry, ``up``/``down``/``not answering``, and its /v1/status answer."""
    testnet = Testnet.load(dir.resolve())
    rows: list[tuple[NodeEntry, str, dict[str, Any] | None]] = []
    for node in testnet.nodes:
        if node.pid is None or not is_running(node.pid, testnet.config_path(node)):
            node.pid = None
            rows.append((node, "down", None))
            continue
        answer = fetch_status(node.url)
        rows.append((node, "up" if answer is not None else "not answering", answer))
    return rows
