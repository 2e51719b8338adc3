"""The configuration of one node: a JSON or TOML file, then ``PHALANX_*`` environment overrides.

Example (JSON; TOML has the same structure)::

    {
      "name": "node0",
      "key_file": "node0/node.key",
      "data_dir": "node0/data",
      "genesis_file": "genesis.json",
      "peer_listen": "127.0.0.1:7100",
      "http_listen": "127.0.0.1:7000",
      "peers": {"<pubkey hex of node1>": "127.0.0.1:7101", "...": "..."},
      "tick_ms": 10,
      "limits": {"pending_pool_max": 100000, "http_body_max_bytes": 1048576,
                 "frame_max_bytes": 16777216, "peer_queue_max": 10000},
      "batch": {"size_max": 500, "delay_ticks": 1, "pipeline_depth_max": 8},
      "log": {"level": "info", "format": "json", "file": null}
    }

Relative paths are relative to the directory of the config file. ``peers`` maps every *other*
validator's public key to the address it listens on for peers. Unknown fields are errors.

Environment overrides: ``PHALANX_<FIELD>`` sets a top-level field and
``PHALANX_<SECTION>__<FIELD>`` one inside a section, case-insensitively, e.g.
``PHALANX_HTTP_LISTEN=127.0.0.1:8000`` or ``PHALANX_LIMITS__FRAME_MAX_BYTES=1048576``. A value
starting with ``{`` or ``[`` is parsed as JSON (``PHALANX_PEERS='{"<pubkey>": "h:p"}'``).
Variables whose first part names no field (``PHALANX_TESTNET_NODE_CMD``, ...) belong to other
tools and are ignored; an unknown field inside a section is an error.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
)

from crypto.hexcodec import KEY_HEX_LEN, is_hex

ENV_PREFIX = "PHALANX_"


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


class HostPort(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _parse_host_port(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError("expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host, int(port))


def _check_host_port(value: HostPort) -> HostPort:
    if not value.host:
        raise ValueError("host must not be empty")
    if not 0 <= value.port <= 65535:
        raise ValueError(f"port {value.port} is outside 0..65535")
    return value


def _check_pubkey(value: str) -> str:
    if not is_hex(value, KEY_HEX_LEN):
        raise ValueError(f"public key must be {KEY_HEX_LEN} lowercase hex characters")
    return value


Address = Annotated[
    HostPort,
    BeforeValidator(_parse_host_port),
    AfterValidator(_check_host_port),
    PlainSerializer(str, return_type=str),
]
PublicKey = Annotated[str, AfterValidator(_check_pubkey)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LimitsConfig(_Section):
    pending_pool_max: int = Field(
        default=100_000, ge=1, description="transactions waiting to be ordered"
    )
    http_body_max_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="larger bodies get 413"
    )
    frame_max_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, le=2**32 - 1)
    peer_queue_max: int = Field(
        default=10_000, ge=1, description="frames queued per peer; oldest dropped"
    )


class BatchConfig(_Section):
    size_max: int = Field(default=500, ge=1, description="transactions per batch")
    delay_ticks: int = Field(
        default=1, ge=0, description="the primary cuts a non-full batch after this"
    )
    pipeline_depth_max: int = Field(default=8, ge=1, description="batches in flight at once")


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "kv"] = "json"
    file: Path | None = None  # None: stderr


class NodeConfig(_Section):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    key_file: Path
    data_dir: Path
    genesis_file: Path
    peer_listen: Address
    http_listen: Address
    peers: dict[PublicKey, Address] = Field(default_factory=dict)
    tick_ms: int = Field(default=10, ge=1, le=10_000)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    def peer_addresses(self, validators: Iterable[str], me: str) -> dict[str, tuple[str, int]]:
        """The ``validators`` argument of ``PeerNetwork``: every genesis validator with its
        address (ours is ``peer_listen``). Raises :class:`ConfigError` if ``peers`` misses a
        validator or names a key that is not one."""
        validators = list(validators)
        others = set(validators) - {me}
        missing = sorted(others - set(self.peers))
        unknown = sorted(set(self.peers) - others)
        if me not in validators:
            raise ConfigError(f"our key {me} is not a validator of the genesis")
        if missing or unknown:
            raise ConfigError(
                f"config peers do not match the genesis validators: missing {missing}, "
                f"not validators (or our own key) {unknown}"
            )
        addresses = {key: (addr.host, addr.port) for key, addr in self.peers.items()}
        addresses[me] = (self.peer_listen.host, self.peer_listen.port)
        return addresses

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_defaults=False)


def env_overrides(environ: Mapping[str, str]) -> list[tuple[tuple[str, ...], Any]]:
    """The ``(field path, value)`` pairs that ``PHALANX_*`` variables ask for."""
    overrides: list[tuple[tuple[str, ...], Any]] = []
    for name, raw in sorted(environ.items()):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = tuple(name[len(ENV_PREFIX) :].lower().split("__"))
        if path[0] not in NodeConfig.model_fields:
            continue
        value: Any = raw
        if raw.lstrip().startswith(("{", "[")):
            try:
                value = json.loads(raw)
            except ValueError as exc:
                raise ConfigError(f"environment variable {name}: not valid JSON: {exc}") from exc
        overrides.append((path, value))
    return overrides


def _apply(data: Mapping[str, Any], overrides: list[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    """A copy of ``data`` with each override's value replacing what is at its path."""
    result: dict[str, Any] = json.loads(json.dumps(data, default=str))  # a deep copy
    for path, value in overrides:
        target = result
        for part in path[:-1]:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[path[-1]] = value
    return result


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise ConfigError(f"config file {path} is not valid {kind}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold an object at the top level")
    return data


def _resolve_paths(config: NodeConfig, base: Path) -> NodeConfig:
    def resolve(path: Path) -> Path:
        return path if path.is_absolute() else (base / path).resolve()

    log = config.log
    if log.file is not None:
        log = log.model_copy(update={"file": resolve(log.file)})
    return config.model_copy(
        update={
            "key_file": resolve(config.key_file),
            "data_dir": resolve(config.data_dir),
            "genesis_file": resolve(config.genesis_file),
            "log": log,
        }
    )


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        given = error.get("input")
        shown = f" (got {given!r})" if isinstance(given, (str, int, bool)) else ""
        lines.append(f"  {where}: {error['msg']}{shown}")
    return "\n".join(lines)


def parse_config(
    data: Mapping[str, Any],
    base_dir: Path,
    environ: Mapping[str, str] | None = None,
    source: str = "config",
) -> NodeConfig:
    """Validate ``data`` with the environment overrides applied; relative paths are taken
    relative to ``base_dir``."""
    merged = _apply(data, env_overrides(os.environ if environ is None else environ))
    try:
        config = NodeConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    return _resolve_paths(config, base_dir)


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Read ``path`` (``.toml`` as TOML, anything else as JSON), apply ``PHALANX_*`` overrides
    from ``environ`` (default: ``os.environ``) and validate. Raises :class:`ConfigError`."""
    return parse_config(_read_file(path), path.resolve().parent, environ, source=str(path))
