"""Node configuration: files, validation errors, environment overrides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from node.config import ConfigError, HostPort, NodeConfig, env_overrides, load_config

PK1, PK2 = "11" * 32, "22" * 32


def minimal(**extra: Any) -> dict[str, Any]:
    return {
        "name": "node0",
        "key_file": "node0/node.key",
        "data_dir": "node0/data",
        "genesis_file": "/abs/genesis.json",
        "peer_listen": "127.0.0.1:7100",
        "http_listen": "127.0.0.1:7000",
        "peers": {PK1: "127.0.0.1:7101", PK2: "localhost:7102"},
        **extra,
    }


def write(tmp_path: Path, data: dict[str, Any], name: str = "node.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_json_file_with_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, minimal()), environ={})
    assert config.key_file == tmp_path / "node0" / "node.key"
    assert config.genesis_file == Path("/abs/genesis.json")
    assert config.peer_listen == HostPort("127.0.0.1", 7100)
    assert config.peers[PK2] == ("localhost", 7102)
    assert config.limits.http_body_max_bytes == 1024 * 1024
    assert config.limits.frame_max_bytes == 8 * 1024 * 1024
    assert config.tick_ms == 10 and config.batch.size_max == 500
    assert config.log.level == "info" and config.log.format == "json" and config.log.file is None


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        'name = "node1"\nkey_file = "k"\ndata_dir = "d"\ngenesis_file = "g.json"\n'
        'peer_listen = "127.0.0.1:7101"\nhttp_listen = "[::1]:7001"\ntick_ms = 25\n'
        f'[peers]\n"{PK1}" = "127.0.0.1:7100"\n[limits]\npeer_queue_max = 50\n'
        '[log]\nformat = "kv"\nfile = "logs/node1.log"\n'
    )
    config = load_config(path, environ={})
    assert config.http_listen == HostPort("::1", 7001) and str(config.http_listen) == "[::1]:7001"
    assert config.tick_ms == 25 and config.limits.peer_queue_max == 50
    assert config.log.file == tmp_path / "logs" / "node1.log"


def test_round_trips_through_json(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, minimal()), environ={})
    again = load_config(write(tmp_path, json.loads(config.to_json()), "again.json"), environ={})
    assert again == config


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"bogus": 1}, "bogus"),
        ({"limits": {"frame_max": 5}}, "limits.frame_max"),
        ({"peer_listen": "127.0.0.1"}, "peer_listen"),
        ({"http_listen": "127.0.0.1:70000"}, "http_listen"),
        ({"peers": {"AB" * 32: "127.0.0.1:1"}}, "peers"),
        ({"peers": {PK1: "nohost"}}, "peers"),
        ({"name": "node 0"}, "name"),
        ({"tick_ms": 0}, "tick_ms"),
        ({"tick_ms": "fast"}, "tick_ms"),
        ({"limits": {"http_body_max_bytes": 10}}, "limits.http_body_max_bytes"),
        ({"log": {"level": "loud"}}, "log.level"),
        ({"log": {"format": "xml"}}, "log.format"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, change: dict[str, Any], where: str) -> None:
    path = write(tmp_path, minimal(**change))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert str(path) in message and where in message


def test_missing_required_field(tmp_path: Path) -> None:
    data = minimal()
    del data["key_file"]
    with pytest.raises(ConfigError, match="key_file"):
        load_config(write(tmp_path, data), environ={})


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.json", environ={})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad, environ={})
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("= nope")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad_toml, environ={})
    array = tmp_path / "array.json"
    array.write_text("[]")
    with pytest.raises(ConfigError, match="object at the top level"):
        load_config(array, environ={})


def test_environment_overrides(tmp_path: Path) -> None:
    environ = {
        "PHALANX_HTTP_LISTEN": "0.0.0.0:8000",
        "PHALANX_TICK_MS": "20",
        "phalanx_limits__frame_max_bytes": "2048",
        "PHALANX_LOG__LEVEL": "debug",
        "PHALANX_PEERS": json.dumps({PK1: "10.0.0.1:9000"}),
        "PHALANX_TESTNET_NODE_CMD": "not a config field: ignored",
        "OTHER_TICK_MS": "99",
    }
    config = load_config(write(tmp_path, minimal()), environ=environ)
    assert config.http_listen == HostPort("0.0.0.0", 8000)
    assert config.tick_ms == 20
    assert config.limits.frame_max_bytes == 2048
    assert config.limits.peer_queue_max == 10_000  # the rest of the section keeps its values
    assert config.log.level == "debug"
    assert config.peers == {PK1: HostPort("10.0.0.1", 9000)}  # a JSON value replaces the whole


def test_bad_environment_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, minimal())
    with pytest.raises(ConfigError, match="tick_ms"):
        load_config(path, environ={"PHALANX_TICK_MS": "soon"})
    with pytest.raises(ConfigError, match=r"limits\.nope"):
        load_config(path, environ={"PHALANX_LIMITS__NOPE": "1"})
    with pytest.raises(ConfigError, match="PHALANX_PEERS"):
        load_config(path, environ={"PHALANX_PEERS": "{broken"})
    assert env_overrides({"PHALANX_LOG__FILE": "x.log", "PHALANX_X": "1"}) == [
        (("log", "file"), "x.log")
    ]


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, minimal()), environ={})
    with pytest.raises(ValueError):
        config.tick_ms = 5


def test_peer_addresses_match_the_genesis(tmp_path: Path) -> None:
    config: NodeConfig = load_config(write(tmp_path, minimal()), environ={})
    me = "33" * 32
    assert config.peer_addresses([PK1, me, PK2], me) == {
        PK1: ("127.0.0.1", 7101),
        PK2: ("localhost", 7102),
        me: ("127.0.0.1", 7100),
    }
    with pytest.raises(ConfigError, match="missing"):
        config.peer_addresses([PK1, PK2, me, "44" * 32], me)
    with pytest.raises(ConfigError, match="not validators"):
        config.peer_addresses([PK1, me], me)
    with pytest.raises(ConfigError, match="not a validator"):
        config.peer_addresses([PK1, PK2], me)
