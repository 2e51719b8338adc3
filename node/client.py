"""A small synchronous client for a Phalanx node's HTTP API (spec §6), on the standard library.

Typical use::

    from node.client import Client, load_key, make_tx, set_op, transfer_op
    from ledger.genesis import load_genesis

    signer = load_key("testnet/client.key")
    genesis = load_genesis("testnet/genesis.json")
    client = Client("http://127.0.0.1:7000")
    tx = make_tx(signer, [set_op("greeting", {"text": "hello"})], chain_id=genesis.chain_id)
    answer = client.submit(tx, wait=True)           # {"tx_id", "status", "receipt"?}
    receipt = client.wait_for_receipt(answer["tx_id"])
    client.verify_receipt(receipt, genesis)         # raises if invalid

Transactions are signed for one chain (spec §3, ``phalanx/tx/v2``): ``chain_id`` comes from the
genesis, or from the node (:meth:`Client.chain_id`) when no genesis is at hand.

Every method raises :class:`ApiError` for an error answer of the node (with its ``status``,
``code`` and ``detail``) and :class:`ClientError` (its base class) when the node cannot be
reached or answers something that is not the API's JSON.
"""

from __future__ import annotations

import json
import secrets
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import Any

from crypto.canonical import MAX_SAFE_INTEGER, CanonicalJsonError, canonical_json, parse_json
from crypto.hashing import hash_object
from crypto.keys import load_private_key
from crypto.signing import TAG_TX, Ed25519Signer
from ledger.genesis import Genesis, check_chain_id
from ledger.proven_read import verify_read as _verify_read
from ledger.receipt import verify_receipt as _verify_receipt

TIMEOUT_S_DEFAULT = 10.0
WAIT_TIMEOUT_MS_DEFAULT = 10_000
NONCE_LIMIT = 2**53
ANSWER_BYTES_MAX = 64 * 1024 * 1024


class ClientError(Exception):
    """The request did not get a usable answer (connection refused, timeout, not JSON...)."""


class ApiError(ClientError):
    """The node answered an error: ``{"error": code, "detail": detail}`` with ``status``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"HTTP {status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class ReceiptError(ClientError):
    """A receipt does not prove what it claims; ``failures`` lists why."""

    def __init__(self, failures: Sequence[str]) -> None:
        super().__init__("receipt does not verify: " + "; ".join(failures))
        self.failures = list(failures)


class ProofError(ClientError):
    """A proven read does not prove what it claims; ``failures`` lists why."""

    def __init__(self, failures: Sequence[str]) -> None:
        super().__init__("proven read does not verify: " + "; ".join(failures))
        self.failures = list(failures)


# ---- transactions ---------------------------------------------------------------------------


def load_key(path: Path | str) -> Ed25519Signer:
    """A client key file (the seed as 64 hex characters, mode 0600); raises KeyFileError."""
    return load_private_key(Path(path))


def set_op(key: str, value: Any) -> dict[str, Any]:
    return {"op": "set", "key": key, "value": value}


def delete_op(key: str) -> dict[str, Any]:
    return {"op": "delete", "key": key}


def cas_op(key: str, expect: int, value: Any) -> dict[str, Any]:
    return {"op": "cas", "key": key, "expect": expect, "value": value}


def chown_op(key: str, to: str) -> dict[str, Any]:
    return {"op": "chown", "key": key, "to": to}


def transfer_op(to: str, amount: int) -> dict[str, Any]:
    return {"op": "transfer", "to": to, "amount": amount}


def make_tx(
    signer: Ed25519Signer,
    ops: Sequence[Mapping[str, Any]],
    nonce: int | None = None,
    *,
    chain_id: str,
) -> dict[str, Any]:
    """A transaction ``{"body", "sig"}`` signed for the chain ``chain_id`` under
    ``phalanx/tx/v2``. Without ``nonce`` a random one makes the body distinct from any earlier
    equal one; give the same nonce to resubmit idempotently."""
    if nonce is None:
        nonce = secrets.randbelow(NONCE_LIMIT)
    if not 0 <= nonce < NONCE_LIMIT:
        raise ValueError("nonce must satisfy 0 <= nonce < 2^53")
    check_chain_id(chain_id)
    body = {
        "chain_id": chain_id,
        "client": signer.public_key,
        "nonce": nonce,
        "ops": [dict(op) for op in ops],
    }
    return {"body": body, "sig": signer.sign(TAG_TX, body)}


def fee_of(tx: Mapping[str, Any], fee_per_byte: int) -> int:
    """What ``tx`` pays when executed: ``fee_per_byte * len(JCS(body))``."""
    return fee_per_byte * len(canonical_json(tx["body"]))


def tx_id_of(tx: Mapping[str, Any]) -> str:
    """``h(JCS(body))``."""
    return hash_object(tx["body"])


# ---- the client -----------------------------------------------------------------------------


class Client:
    """One node's API. ``base_url`` is like ``http://127.0.0.1:7000``."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float = TIMEOUT_S_DEFAULT,
        cacert: Path | None = None,
    ) -> None:
        """``cacert``: a PEM file of the certificate(s) to trust for an ``https://`` node
        (its own self-signed certificate, say); by default the system's CAs."""
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._ssl: ssl.SSLContext | None = None
        if cacert is not None:
            try:
                self._ssl = ssl.create_default_context(cafile=cacert)
            except (OSError, ssl.SSLError) as exc:
                raise ClientError(
                    f"cannot use {cacert} as the certificate to trust: {exc}; give a PEM file"
                ) from exc

    # -- writing --

    def submit(
        self, tx: Mapping[str, Any], wait: bool = False, timeout_ms: int | None = None
    ) -> dict[str, Any]:
        """``POST /v1/tx``: ``{"tx_id", "status"}``, with ``"receipt"`` once committed."""
        query: dict[str, Any] = {}
        if wait:
            query["wait"] = "commit"
            if timeout_ms is not None:
                query["timeout_ms"] = timeout_ms
        wait_s = (WAIT_TIMEOUT_MS_DEFAULT if timeout_ms is None else timeout_ms) / 1000
        extra_s = wait_s if wait else 0.0
        answer: dict[str, Any] = self._request("POST", "/v1/tx", query, tx, extra_s)
        return answer

    def submit_many(self, txs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``POST /v1/txs`` (at most 1,000): one ``{"tx_id", "status"}`` or
        ``{"error", "detail"}`` per transaction, in order."""
        answer: list[dict[str, Any]] = self._request("POST", "/v1/txs", {}, list(txs))
        return answer

    def wait_for_receipt(
        self, tx_id: str, timeout_s: float = 30.0, poll_s: float = 0.05
    ) -> dict[str, Any]:
        """Poll ``GET /v1/tx/{tx_id}`` until committed; the receipt. Raises ClientError on
        timeout, ApiError if the node does not know the transaction."""
        deadline = time.monotonic() + timeout_s
        while True:
            answer = self.tx(tx_id)
            if answer.get("status") == "committed":
                receipt: dict[str, Any] = answer["receipt"]
                return receipt
            if time.monotonic() >= deadline:
                raise ClientError(f"transaction {tx_id} not committed within {timeout_s} s")
            time.sleep(poll_s)
            poll_s = min(poll_s * 2, 1.0)

    # -- reading --

    def tx(self, tx_id: str) -> dict[str, Any]:
        """``GET /v1/tx/{tx_id}``."""
        answer: dict[str, Any] = self._request("GET", f"/v1/tx/{_segment(tx_id)}")
        return answer

    def receipt(self, tx_id: str) -> dict[str, Any] | None:
        """The receipt of a committed transaction, None if it is only pending."""
        answer = self.tx(tx_id)
        receipt: dict[str, Any] | None = answer.get("receipt")
        return receipt

    def status(self) -> dict[str, Any]:
        answer: dict[str, Any] = self._request("GET", "/v1/status")
        return answer

    def chain_id(self) -> str:
        """The node's chain_id (from ``GET /v1/status``), to sign transactions for it."""
        chain_id = self.status().get("chain_id")
        if not isinstance(chain_id, str):
            raise ClientError(f"{self.base_url}/v1/status names no chain_id")
        return chain_id

    def block(self, seq: int) -> dict[str, Any]:
        answer: dict[str, Any] = self._request("GET", f"/v1/blocks/{int(seq)}")
        return answer

    def state(self, key: str) -> dict[str, Any] | None:
        """``{"key", "value", "version", "owner", "seq"}``, or None if the key is absent."""
        try:
            answer: dict[str, Any] = self._request("GET", f"/v1/state/{_segment(key)}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return answer

    def get_state(
        self,
        key: str,
        proof: bool = False,
        genesis: Genesis | None = None,
        min_seq: int | None = None,
        timeout_ms: int | None = None,
    ) -> dict[str, Any] | None:
        """A key's entry. With ``proof=True`` (``genesis`` required) the answer is a proven read
        (spec §6), present or absent, verified before it is returned (:class:`ProofError` if
        it does not verify); without, None when the key is absent. ``min_seq``: as of block
        ``min_seq`` or later (read your writes across nodes)."""
        if not proof:
            return (
                self.state(key) if min_seq is None else self._read_state(key, min_seq, timeout_ms)
            )
        if genesis is None:
            raise ValueError("a proven read is verified against the genesis: pass genesis=")
        query = _read_query(True, min_seq, timeout_ms)
        answer: dict[str, Any] = self._request("GET", f"/v1/state/{_segment(key)}", query)
        failures = _verify_read(answer, genesis)
        if not failures and answer.get("key") != key:
            failures = [f"the answer is about key {answer.get('key')!r}, not {key!r}"]
        if failures:
            raise ProofError(failures)
        return answer

    def get_account(
        self,
        pubkey: str,
        proof: bool = False,
        genesis: Genesis | None = None,
        min_seq: int | None = None,
        timeout_ms: int | None = None,
    ) -> dict[str, Any]:
        """An account's balance; with ``proof=True`` a verified proven read (see get_state)."""
        if proof and genesis is None:
            raise ValueError("a proven read is verified against the genesis: pass genesis=")
        query = _read_query(proof, min_seq, timeout_ms)
        answer: dict[str, Any] = self._request("GET", f"/v1/accounts/{_segment(pubkey)}", query)
        if proof and genesis is not None:
            failures = _verify_read(answer, genesis)
            if not failures and answer.get("pubkey") != pubkey:
                failures = [f"the answer is about {answer.get('pubkey')}, not {pubkey}"]
            if failures:
                raise ProofError(failures)
        return answer

    def _read_state(self, key: str, min_seq: int, timeout_ms: int | None) -> dict[str, Any] | None:
        try:
            answer: dict[str, Any] = self._request(
                "GET", f"/v1/state/{_segment(key)}", _read_query(False, min_seq, timeout_ms)
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return answer

    def balance(self, pubkey: str) -> int:
        answer = self.account(pubkey)
        balance: int = answer["balance"]
        return balance

    def account(self, pubkey: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._request("GET", f"/v1/accounts/{_segment(pubkey)}")
        return answer

    def metrics(self) -> str:
        return self._raw("GET", "/metrics", accept="text/plain").decode("utf-8")

    def events(
        self, from_seq: int | None = None, timeout_s: float | None = 60.0
    ) -> Generator[dict[str, Any], None, None]:
        """``GET /v1/events``: yields each block event's data; ends when the node closes the
        stream. ``timeout_s`` bounds the wait for each line (keep-alives arrive every 15 s)."""
        query = {} if from_seq is None else {"from_seq": from_seq}
        request = urllib.request.Request(
            self._url("/v1/events", query), headers={"Accept": "text/event-stream"}
        )
        with self._open(request, timeout_s) as response:
            data_lines: list[str] = []
            for raw in response:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("data:"):
                    data_lines.append(line[5:].lstrip(" "))
                elif not line and data_lines:
                    yield json.loads("\n".join(data_lines))
                    data_lines = []

    # -- receipts --

    @staticmethod
    def verify_receipt(receipt: Any, genesis: Genesis, tx_id: str | None = None) -> None:
        """Raise :class:`ReceiptError` unless ``receipt`` proves (for ``tx_id``, if given) a
        commitment under ``genesis`` (spec §5)."""
        failures = _verify_receipt(receipt, genesis)
        if not failures and tx_id is not None and receipt.get("tx_id") != tx_id:
            failures = [f"the receipt is for {receipt.get('tx_id')}, not {tx_id}"]
        if failures:
            raise ReceiptError(failures)

    # -- plumbing --

    def _url(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        return url

    def _open(self, request: urllib.request.Request, timeout_s: float | None) -> Any:
        try:
            return urllib.request.urlopen(request, timeout=timeout_s, context=self._ssl)
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(f"cannot reach {self.base_url}: {reason}") from exc

    def _raw(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: bytes | None = None,
        extra_s: float = 0.0,
        accept: str = "application/json",
    ) -> bytes:
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self._url(path, query), data=body, method=method, headers=headers
        )
        with self._open(request, self.timeout_s + extra_s) as response:
            data: bytes = response.read(ANSWER_BYTES_MAX + 1)
        if len(data) > ANSWER_BYTES_MAX:
            raise ClientError(f"the answer to {method} {path} is larger than {ANSWER_BYTES_MAX}")
        return data

    def _request(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        payload: Any = None,
        extra_s: float = 0.0,
    ) -> Any:
        body = None
        if payload is not None:
            try:
                body = canonical_json(payload)
            except CanonicalJsonError as exc:
                raise ValueError(f"cannot send this value: {exc}") from exc
        data = self._raw(method, path, query, body, extra_s)
        try:
            return parse_json(data)
        except CanonicalJsonError as exc:
            raise ClientError(f"{method} {path}: the node answered invalid JSON: {exc}") from exc


def _read_query(proof: bool, min_seq: int | None, timeout_ms: int | None) -> dict[str, Any]:
    query: dict[str, Any] = {}
    if proof:
        query["proof"] = "true"
    if min_seq is not None:
        query["min_seq"] = int(min_seq)
    if timeout_ms is not None:
        query["timeout_ms"] = int(timeout_ms)
    return query


def _segment(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _api_error(exc: urllib.error.HTTPError) -> ClientError:
    try:
        data = exc.read(1024 * 1024)
        answer = json.loads(data)
        if isinstance(answer, dict) and isinstance(answer.get("error"), str):
            return ApiError(exc.code, answer["error"], str(answer.get("detail", "")))
    except (ValueError, OSError):
        pass
    finally:
        exc.close()
    return ApiError(exc.code, "http_error", f"HTTP {exc.code} {exc.reason}")


__all__ = [
    "MAX_SAFE_INTEGER",
    "ApiError",
    "Client",
    "ClientError",
    "ReceiptError",
    "cas_op",
    "chown_op",
    "delete_op",
    "fee_of",
    "load_key",
    "make_tx",
    "set_op",
    "transfer_op",
    "tx_id_of",
]
