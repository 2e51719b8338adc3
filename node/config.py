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
                 "frame_max_bytes": 8388608, "peer_queue_max": 10000},
      "batch": {"size_max": 500, "pipeline_depth_max": 8},
      "storage": {"sync": "periodic", "sync_interval_ms": 100},
      "log": {"level": "info", "format": "json", "file": null}
    }

Relative paths are relative to the directory of the config file. ``peers`` maps every *other*
validator's public key to the address it listens on for peers. Unknown fields are errors.

Environment overrides (read by pydantic-settings, over the file's values): ``PHALANX_<FIELD>``
sets a top-level field and
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
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, SettingsError
from pydantic_settings.sources.utils import parse_env_vars

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
    frame_max_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        le=2**32 - 1,
        description="largest peer message; batches are capped at a quarter of it (at most 4 MiB)",
    )
    peer_queue_max: int = Field(
        default=10_000, ge=1, description="frames queued per peer; oldest dropped"
    )
    peer_queue_bytes_max: int = Field(
        default=32 * 1024 * 1024,
        ge=2048,
        description="bytes queued per peer; oldest dropped (at least frame_max_bytes + 4)",
    )
    http_connections_max: int = Field(
        default=1024, ge=1, description="open HTTP connections; more are closed at once"
    )
    http_connections_per_ip_max: int = Field(
        default=64, ge=1, description="open HTTP connections from one address"
    )
    http_keepalive_s: float = Field(
        default=75.0, gt=0, le=3600, description="idle time before a keep-alive is closed"
    )
    http_header_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="time to send a request's headers"
    )
    http_requests_in_flight_per_ip: int = Field(
        default=16, ge=1, description="requests of one address handled at once; more get 429"
    )
    http_txs_per_s_per_ip: float = Field(
        default=10_000.0, gt=0, description="transactions one address may submit per second"
    )

    @model_validator(mode="after")
    def _queue_holds_a_frame(self) -> LimitsConfig:
        if self.peer_queue_bytes_max < self.frame_max_bytes + 4:
            raise ValueError(
                f"peer_queue_bytes_max ({self.peer_queue_bytes_max}) must hold one frame: at "
                f"least frame_max_bytes + 4 ({self.frame_max_bytes + 4})"
            )
        return self


class BatchConfig(_Section):
    size_max: int = Field(default=500, ge=1, description="transactions per batch")
    pipeline_depth_max: int = Field(default=8, ge=1, description="batches in flight at once")


class StorageConfig(_Section):
    sync: Literal["periodic", "every_write"] = Field(
        default="periodic",
        description="periodic: writes reach the disk every sync_interval_ms (a killed process "
        "loses nothing; after the machine went down the node refuses to start and resyncs from "
        "an empty directory, see ledger/power_loss.py); every_write: fsync each write (survives "
        "power loss in place, several ms per commit on the critical path)",
    )
    sync_interval_ms: int = Field(
        default=100, ge=1, le=10_000, description="how often periodic sync flushes to disk"
    )


class HttpTlsConfig(_Section):
    """Optional HTTPS for the API: PEM certificate (chain) and private key files. Clients
    check it with ``phalanx tx --cacert``."""

    cert_file: Path
    key_file: Path


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="least severe level written (debug shows every peer dial)"
    )
    format: Literal["json", "kv"] = Field(
        default="json", description="one JSON object or key=value pairs per line"
    )
    file: Path | None = Field(default=None, description="append to this file; null: stderr")


class NodeConfig(_Section):
    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="this node's name in logs (its validator name in the genesis)",
    )
    key_file: Path = Field(description="this validator's Ed25519 key (phalanx keygen), mode 0600")
    data_dir: Path = Field(description="the ledger (LMDB); created if absent")
    genesis_file: Path = Field(description="the genesis shared by every validator")
    peer_listen: Address = Field(description="where to accept peer links, e.g. 0.0.0.0:7100")
    http_listen: Address = Field(description="where to serve the HTTP API and the dashboard")
    peers: dict[PublicKey, Address] = Field(
        default_factory=dict,
        description="every other validator's public key -> the address it listens on for peers",
    )
    tick_ms: int = Field(
        default=10, ge=1, le=10_000, description="replica clock period (timeouts count ticks)"
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    http_tls: HttpTlsConfig | None = Field(
        default=None,
        description='optional HTTPS for the API: {"cert_file", "key_file"} (PEM paths); '
        "clients trust it with phalanx tx --cacert. null: plain HTTP",
    )

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
    """The ``(field path, value)`` pairs that ``PHALANX_*`` variables ask for, as
    pydantic-settings reads them (prefix ``PHALANX_``, sections split at ``__``, names
    case-insensitive, JSON for dict values). Values stay text: :class:`NodeConfig` validates
    them with the file's, so an error names the field either way."""
    try:
        found = _EnvSource(_env_model(), environ)()
    except SettingsError as exc:
        field = str(exc).split('"')[1] if '"' in str(exc) else "?"
        name = f"{ENV_PREFIX}{field.upper()}"
        raise ConfigError(f"environment variable {name}: not valid JSON ({exc})") from exc
    overrides: list[tuple[tuple[str, ...], Any]] = []
    for name, value in sorted(found.items()):
        if name in _section_names() and isinstance(value, dict):
            overrides.extend(((name, key), item) for key, item in sorted(value.items()))
        else:
            overrides.append(((name,), value))
    return overrides


def _section_names() -> set[str]:
    return {
        name
        for name, info in NodeConfig.model_fields.items()
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
    }


@cache
def _env_model() -> type[BaseSettings]:
    """A settings class with NodeConfig's field names: sections keep their model (so that
    ``PHALANX_<SECTION>__<FIELD>`` is recognised), dict fields take JSON, the rest plain text."""

    def annotation(name: str, info: Any) -> Any:
        if name in _section_names():
            return info.annotation
        if get_origin(info.annotation) is dict:
            return dict[str, Any]
        return str

    fields: dict[str, Any] = {
        name: (annotation(name, info), None) for name, info in NodeConfig.model_fields.items()
    }
    model: type[BaseSettings] = create_model("_PhalanxEnv", __base__=_EnvBase, **fields)
    return model


class _EnvBase(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", case_sensitive=False
    )


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (tests pass their own)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = dict(environ)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


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
    http_tls = config.http_tls
    if http_tls is not None:
        http_tls = http_tls.model_copy(
            update={
                "cert_file": resolve(http_tls.cert_file),
                "key_file": resolve(http_tls.key_file),
            }
        )
    return config.model_copy(
        update={
            "key_file": resolve(config.key_file),
            "data_dir": resolve(config.data_dir),
            "genesis_file": resolve(config.genesis_file),
            "log": log,
            "http_tls": http_tls,
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
