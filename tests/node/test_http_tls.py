"""Optional HTTPS for the API: the node serves its configured certificate, and the Python
client (and so ``phalanx tx --cacert``) trusts exactly the certificate it is given."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from crypto.certs import self_signed_server_certificate
from node.api.limits import HttpLimits, HttpServer, http_ssl, server_ssl_context, start_http
from node.cli.main import main as phalanx
from node.client import Client, ClientError
from node.config import ConfigError, parse_config
from tests.api.harness import ApiHarness


@pytest.fixture()
def https(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    cert, key = self_signed_server_certificate(os.urandom(32), "127.0.0.1")
    cert_file, key_file = tmp_path / "api.crt", tmp_path / "api.key"
    cert_file.write_bytes(cert)
    key_file.write_bytes(key)
    loop = asyncio.new_event_loop()
    harness = ApiHarness(tmp_path / "data")
    box: dict[str, HttpServer] = {}
    ready = threading.Event()

    async def serve() -> None:
        box["server"] = await start_http(
            harness.app(),
            "127.0.0.1",
            0,
            HttpLimits(),
            ssl_context=server_ssl_context(cert_file, key_file),
        )
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    ready.wait(10)
    try:
        yield f"https://127.0.0.1:{box['server'].port}", cert_file
    finally:
        asyncio.run_coroutine_threadsafe(box["server"].stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        harness.close()


def test_the_client_trusts_the_given_certificate_and_nothing_else(
    https: tuple[str, Path], tmp_path: Path
) -> None:
    url, cert_file = https
    assert Client(url, cacert=cert_file).status()["chain_id"]
    with pytest.raises(ClientError, match="cannot reach"):
        Client(url).status()  # the system CAs do not vouch for a self-signed certificate
    other, _ = self_signed_server_certificate(os.urandom(32), "127.0.0.1")
    (tmp_path / "other.crt").write_bytes(other)
    with pytest.raises(ClientError, match="cannot reach"):
        Client(url, cacert=tmp_path / "other.crt").status()
    with pytest.raises(ClientError, match="PEM"):
        Client(url, cacert=tmp_path / "missing.crt")


def test_phalanx_tx_takes_cacert(
    https: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, cert_file = https
    key = tmp_path / "client.key"
    key.write_text(os.urandom(32).hex() + "\n")
    key.chmod(0o600)
    code = phalanx(
        [
            "tx",
            "set",
            "k",
            "1",
            "--url",
            url,
            "--key",
            str(key),
            "--cacert",
            str(cert_file),
            "--sign-only",
        ]
    )
    assert code == 0
    assert '"chain_id"' in capsys.readouterr().out  # the chain was asked over HTTPS
    code = phalanx(["tx", "set", "k", "1", "--url", url, "--key", str(key), "--sign-only"])
    assert code != 0
    assert "certificate" in capsys.readouterr().err.lower()


def test_the_config_names_the_https_certificate(tmp_path: Path) -> None:
    cert, key = self_signed_server_certificate(os.urandom(32), "127.0.0.1")
    (tmp_path / "api.crt").write_bytes(cert)
    (tmp_path / "api.key").write_bytes(key)
    base = {
        "name": "n0",
        "key_file": "node.key",
        "data_dir": "data",
        "genesis_file": "genesis.json",
        "peer_listen": "127.0.0.1:7100",
        "http_listen": "127.0.0.1:7000",
    }
    plain = parse_config(base, tmp_path, environ={})
    assert http_ssl(plain) is None
    config = parse_config(
        {**base, "http_tls": {"cert_file": "api.crt", "key_file": "api.key"}}, tmp_path, environ={}
    )
    assert config.http_tls is not None and config.http_tls.cert_file == tmp_path / "api.crt"
    assert http_ssl(config) is not None
    broken = parse_config(
        {**base, "http_tls": {"cert_file": "api.key", "key_file": "api.crt"}}, tmp_path, environ={}
    )
    with pytest.raises(ConfigError, match="http_tls"):
        http_ssl(broken)
