"""The OpenAPI 3 description of the node's HTTP API (spec §6), served at ``/openapi.json``.

Built as a plain dict so that it needs no generator and is checked by the tests (it loads in
schemathesis, and a bounded schemathesis run against the app finds no 5xx and no answer that
contradicts it).
"""

from __future__ import annotations

from typing import Any

from crypto.canonical import MAX_SAFE_INTEGER

OPENAPI_VERSION = "3.0.3"
API_VERSION = "1.0.0"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
    if description:
        schema["description"] = description
    return schema


def _hex(length: int, description: str) -> dict[str, Any]:
    return {
        "type": "string",
        "pattern": f"^[0-9a-f]{{{length}}}$",
        "minLength": length,
        "maxLength": length,
        "description": description,
    }


_UINT = {"type": "integer", "minimum": 0, "maximum": MAX_SAFE_INTEGER}
_SEQ = {"type": "integer", "minimum": 1, "maximum": MAX_SAFE_INTEGER}
_KEY = {
    "type": "string",
    "minLength": 1,
    "maxLength": 256,
    "description": "1 to 256 UTF-8 bytes",
}
_ANY = {"description": "any JSON value; floats are refused"}


def _schemas() -> dict[str, Any]:
    return {
        "Error": _obj(
            {
                "error": {"type": "string", "description": "a stable error code"},
                "detail": {"type": "string", "description": "a human sentence"},
            },
            "Every error answer has this body.",
        ),
        "Hash": _hex(64, "a SHA-256 hash in lowercase hex"),
        "PublicKey": _hex(64, "an Ed25519 public key in lowercase hex"),
        "Signature": _hex(128, "an Ed25519 signature in lowercase hex"),
        "SetOp": _obj({"op": {"type": "string", "enum": ["set"]}, "key": _KEY, "value": _ANY}),
        "DeleteOp": _obj({"op": {"type": "string", "enum": ["delete"]}, "key": _KEY}),
        "CasOp": _obj(
            {
                "op": {"type": "string", "enum": ["cas"]},
                "key": _KEY,
                "expect": {**_UINT, "description": "the key's version; 0 = absent"},
                "value": _ANY,
            }
        ),
        "ChownOp": _obj(
            {
                "op": {"type": "string", "enum": ["chown"]},
                "key": _KEY,
                "to": _ref("PublicKey"),
            }
        ),
        "TransferOp": _obj(
            {
                "op": {"type": "string", "enum": ["transfer"]},
                "to": _ref("PublicKey"),
                "amount": {"type": "integer", "minimum": 1, "maximum": MAX_SAFE_INTEGER},
            }
        ),
        "Op": {
            "oneOf": [
                _ref("SetOp"),
                _ref("DeleteOp"),
                _ref("CasOp"),
                _ref("ChownOp"),
                _ref("TransferOp"),
            ],
            "discriminator": {
                "propertyName": "op",
                "mapping": {
                    "set": "#/components/schemas/SetOp",
                    "delete": "#/components/schemas/DeleteOp",
                    "cas": "#/components/schemas/CasOp",
                    "chown": "#/components/schemas/ChownOp",
                    "transfer": "#/components/schemas/TransferOp",
                },
            },
        },
        "TxBody": _obj(
            {
                "chain_id": {
                    "type": "string",
                    "pattern": "^[a-z0-9._-]{1,64}$",
                    "description": "the network's chain_id (GET /v1/status); another is refused "
                    "with 400 wrong_chain",
                },
                "client": _ref("PublicKey"),
                "nonce": {"type": "integer", "minimum": 0, "maximum": MAX_SAFE_INTEGER},
                "ops": {"type": "array", "items": _ref("Op"), "minItems": 1, "maxItems": 64},
            },
            "JCS(body) is at most 65,536 bytes; tx_id = h(JCS(body)); the fee is the genesis's "
            "fee_per_byte times len(JCS(body)), and a client that cannot pay it beside its "
            "other pending transactions is refused with 400 insufficient_fee.",
        ),
        "Transaction": _obj(
            {"body": _ref("TxBody"), "sig": _ref("Signature")},
            "sig: Ed25519 by body.client over utf8('phalanx/tx/v2') || 0x00 || JCS(body).",
        ),
        "BatchHeader": _obj(
            {
                "chain_id": {"type": "string"},
                "seq": _SEQ,
                "time_ms": _UINT,
                "tx_count": _UINT,
                "tx_root": _ref("Hash"),
            }
        ),
        "Certificate": _obj(
            {
                "view": _UINT,
                "signatures": {
                    "type": "object",
                    "additionalProperties": _ref("Signature"),
                    "description": "validator public key -> commit vote signature",
                },
            }
        ),
        "Result": _obj(
            {
                "ok": {"type": "boolean"},
                "error": {"type": "string", "nullable": True},
            }
        ),
        "Execution": _obj(
            {
                "state_root": _ref("Hash"),
                "results_root": _ref("Hash"),
                "signatures": {
                    "type": "object",
                    "additionalProperties": _ref("Signature"),
                    "description": "validator public key -> execution vote signature",
                },
            },
            "Spec §5 execution certificate: q votes over {chain_id, seq, block_hash, "
            "state_root, results_root} under phalanx/execution/v1.",
        ),
        "StateProof": _obj(
            {
                "siblings": {"type": "array", "items": _ref("Hash"), "maxItems": 256},
                "leaf": {
                    **_obj({"path": _ref("Hash"), "data_hash": _ref("Hash")}),
                    "nullable": True,
                },
            },
            "Spec §5 state proof: siblings from the root down; leaf: the other entry an "
            "absence proof ends at, or null.",
        ),
        "Receipt": _obj(
            {
                "tx_id": _ref("Hash"),
                "seq": _SEQ,
                "index": _UINT,
                "proof": {"type": "array", "items": _ref("Hash"), "maxItems": 64},
                "batch": _ref("BatchHeader"),
                "certificate": _ref("Certificate"),
                "prev_hash": _ref("Hash"),
                "result": _ref("Result"),
                "result_proof": {"type": "array", "items": _ref("Hash"), "maxItems": 64},
                "execution": {**_ref("Execution"), "nullable": True},
            },
            "Spec §6: proves the commitment and the result to anyone holding the genesis "
            "(execution may be null for a moment after the commit).",
        ),
        "TxPending": _obj(
            {"tx_id": _ref("Hash"), "status": {"type": "string", "enum": ["pending"]}}
        ),
        "TxCommitted": _obj(
            {
                "tx_id": _ref("Hash"),
                "status": {"type": "string", "enum": ["committed"]},
                "receipt": _ref("Receipt"),
            }
        ),
        "TxAccepted": _obj(
            {"tx_id": _ref("Hash"), "status": {"type": "string", "enum": ["pending", "committed"]}}
        ),
        "TxItemResult": {"oneOf": [_ref("TxAccepted"), _ref("Error")]},
        "Block": _obj(
            {
                "seq": _SEQ,
                "hash": _ref("Hash"),
                "prev_hash": _ref("Hash"),
                "batch": _ref("BatchHeader"),
                "txs": {"type": "array", "items": _ref("Transaction")},
                "results": {"type": "array", "items": _ref("Result")},
                "certificate": _ref("Certificate"),
                "execution": {**_ref("Execution"), "nullable": True},
            }
        ),
        "ProvenStateEntry": _obj(
            {
                "key": {"type": "string"},
                "value": _ANY,
                "version": _UINT,
                "owner": {**_ref("PublicKey"), "nullable": True},
                "seq": _SEQ,
                "block_hash": _ref("Hash"),
                "execution": _ref("Execution"),
                "state_proof": _ref("StateProof"),
            },
            "?proof=true: present, or absent (value null, version 0, owner null), as of "
            "block seq, provable with the genesis alone (spec §6).",
        ),
        "ProvenAccount": _obj(
            {
                "pubkey": _ref("PublicKey"),
                "balance": _UINT,
                "seq": _SEQ,
                "block_hash": _ref("Hash"),
                "execution": _ref("Execution"),
                "state_proof": _ref("StateProof"),
            }
        ),
        "StateEntry": _obj(
            {
                "key": {"type": "string"},
                "value": _ANY,
                "version": _SEQ,
                "owner": _ref("PublicKey"),
                "seq": {**_UINT, "description": "as of this executed block"},
            }
        ),
        "Account": _obj(
            {
                "pubkey": _ref("PublicKey"),
                "balance": _UINT,
                "seq": {**_UINT, "description": "as of this executed block"},
            }
        ),
        "Status": _obj(
            {
                "name": {"type": "string"},
                "pubkey": _ref("PublicKey"),
                "chain_id": {"type": "string"},
                "view": _UINT,
                "primary": _ref("PublicKey"),
                "seq": {**_UINT, "description": "the last executed sequence number"},
                "head_hash": _ref("Hash"),
                "stable_checkpoint": _UINT,
                "n": {"type": "integer", "minimum": 1},
                "f": _UINT,
                "version": {"type": "string", "description": "phalanx --version of the node"},
                "catching_up": {
                    "type": "boolean",
                    "description": "fetching committed blocks from the peers",
                },
                "peers_connected": {**_UINT, "description": "validators linked to now"},
            }
        ),
        **_operator_schemas(),
        "BlockEvent": _obj(
            {
                "seq": _SEQ,
                "hash": _ref("Hash"),
                "tx_count": _UINT,
                "tx_ids": {"type": "array", "items": _ref("Hash")},
            },
            "The data of one `block` event of GET /v1/events.",
        ),
    }


def _operator_schemas() -> dict[str, Any]:
    """The answers of node/api/operator.py (spec §8: health, peers, validators, blocks)."""
    nullable_uint = {**_UINT, "nullable": True}
    return {
        "Health": {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["ok", "unhealthy"]},
                "reasons": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "'<code>: <sentence>'; code not_enough_peers, catching_up, "
                    "halted or diverged",
                },
            },
            "required": ["status"],
            "additionalProperties": False,
        },
        "Peer": _obj(
            {
                "name": {"type": "string"},
                "pubkey": _ref("PublicKey"),
                "address": {"type": "string", "nullable": True, "description": "HOST:PORT"},
                "connected": {"type": "boolean"},
                "head_seq": {**nullable_uint, "description": "its last announced head"},
                "last_seen_ms": {**nullable_uint, "description": "unix ms of its last frame"},
            }
        ),
        "Validators": _obj(
            {
                "chain_id": {"type": "string"},
                "genesis_hash": _ref("Hash"),
                "n": {"type": "integer", "minimum": 1},
                "f": _UINT,
                "q": {"type": "integer", "minimum": 1},
                "validators": {
                    "type": "array",
                    "items": _obj({"name": {"type": "string"}, "pubkey": _ref("PublicKey")}),
                },
            }
        ),
        "BlockSummary": _obj(
            {"seq": _SEQ, "hash": _ref("Hash"), "time_ms": _UINT, "tx_count": _UINT}
        ),
        "BlockList": _obj(
            {
                "blocks": {"type": "array", "items": _ref("BlockSummary"), "maxItems": 1000},
                "next_from_seq": {
                    **_SEQ,
                    "nullable": True,
                    "description": "the seq after the last listed; null: the head was reached",
                },
            }
        ),
        "Dashboard": {
            "type": "object",
            "description": "What the dashboard page polls (not in the spec): this node's "
            "status and health, each validator's last node-status report, per-second series.",
            "properties": {
                "status": {"type": "object", "description": "Status, plus healthy"},
                "health": _ref("Health"),
                "validators": {"type": "array", "items": {"type": "object"}},
                "series": {"type": "array", "items": {"type": "object"}},
            },
            "required": ["status", "health", "validators", "series"],
        },
    }


def _operator_paths() -> dict[str, Any]:
    def get(op_id: str, summary: str, responses: dict[str, Any], **more: Any) -> dict[str, Any]:
        return {"get": {"operationId": op_id, "summary": summary, "responses": responses, **more}}

    html = {"text/html": {"schema": {"type": "string"}}}
    return {
        "/v1/health": get(
            "getHealth",
            "200 when running, linked to q - 1 peers, not catching up, not halted/diverged",
            {
                **_ok("healthy", _ref("Health")),
                "503": {"description": "unhealthy", "content": _json_content(_ref("Health"))},
                **_E400,
                **_E406,
            },
        ),
        "/v1/peers": get(
            "getPeers",
            "Every other validator, its address and link",
            {**_ok("peers", {"type": "array", "items": _ref("Peer")}), **_E400, **_E406},
        ),
        "/v1/validators": get(
            "getValidators",
            "The validator set of the genesis",
            {**_ok("validators", _ref("Validators")), **_E400, **_E406},
        ),
        "/v1/genesis": get(
            "getGenesis",
            "The genesis document (spec §2)",
            {**_ok("genesis", {"type": "object"}), **_E400, **_E406},
        ),
        "/v1/blocks": get(
            "listBlocks",
            "Block summaries, ascending from from_seq",
            {**_ok("a page of summaries", _ref("BlockList")), **_E400, **_E406},
            parameters=[
                {
                    "name": "from_seq",
                    "in": "query",
                    "required": False,
                    "schema": {**_SEQ, "default": 1},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                },
            ],
        ),
        "/v1/dashboard": get(
            "getDashboard",
            "The dashboard's data (implementation-specific)",
            {**_ok("cluster view", _ref("Dashboard")), **_E400, **_E406},
        ),
        "/v1/dashboard/block/{seq}": get(
            "getDashboardBlock",
            "A block with its transactions' ids (implementation-specific, for the dashboard)",
            {
                **_ok(
                    "block and tx ids",
                    _obj(
                        {
                            "block": _ref("Block"),
                            "tx_ids": {"type": "array", "items": _ref("Hash")},
                        }
                    ),
                ),
                **_E400,
                **_E404,
                **_E406,
            },
            parameters=[_path_param("seq", _SEQ, "sequence number")],
        ),
        "/": get(
            "getDashboardPage",
            "The dashboard page (HTML, no build step)",
            {"200": {"description": "the page", "content": html}},
        ),
        "/dashboard/{file}": get(
            "getDashboardFile",
            "The dashboard's static files (dashboard.js, dashboard.css)",
            {
                "200": {
                    "description": "the file",
                    "content": {
                        "text/javascript": {"schema": {"type": "string"}},
                        "text/css": {"schema": {"type": "string"}},
                        **html,
                    },
                },
                **_E404,
            },
            parameters=[
                _path_param(
                    "file",
                    {"type": "string", "pattern": "^[a-z]+[.](js|css|html)$", "maxLength": 64},
                    "a file name",
                )
            ],
        ),
    }


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json_content(_ref("Error"))}


_E400 = {"400": _error("malformed or invalid request")}
_E404 = {"404": _error("unknown")}
_E406 = {"406": _error("the Accept header excludes the answer's media type")}
_E413 = {"413": _error("request too large")}
_E429 = {"429": _error("overloaded: retry later")}


def _ok(description: str, schema: dict[str, Any], status: str = "200") -> dict[str, Any]:
    return {status: {"description": description, "content": _json_content(schema)}}


def _path_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


_STATEMENT = _obj({"tag": {"type": "string"}, "object": {"type": "object"}, "sig": _hex(128, "")})
_EVIDENCE_LIST = _obj(
    {
        "evidence": {
            "type": "array",
            "items": _obj(
                {
                    "kind": {"type": "string"},
                    "validator": _hex(64, "the validator's public key"),
                    "a": _STATEMENT,
                    "b": _STATEMENT,
                }
            ),
        }
    }
)


_E503 = {
    "503": _error(
        "cannot answer now: min_seq not reached in time (min_seq_not_reached), no execution "
        "certificate yet (not_certified), or the node diverged (diverged)"
    )
}
_READ_PARAMS = [
    {
        "name": "proof",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": ["true", "false"]},
        "description": "true: add block_hash, execution and state_proof (spec §6)",
    },
    {
        "name": "min_seq",
        "in": "query",
        "required": False,
        "schema": _UINT,
        "description": "first wait until this block is executed here (503 if not in time)",
    },
    {
        "name": "timeout_ms",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 0, "maximum": 60000},
        "description": "with min_seq or proof: how long to wait (default 10000)",
    },
]


def _paths() -> dict[str, Any]:
    return {
        "/v1/tx": {
            "post": {
                "operationId": "submitTx",
                "summary": "Submit one transaction",
                "parameters": [
                    {
                        "name": "wait",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["commit"]},
                        "description": "wait until the transaction is committed",
                    },
                    {
                        "name": "timeout_ms",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0, "maximum": 60000},
                        "description": "with wait=commit: how long to wait (default 10000)",
                    },
                ],
                "requestBody": {"required": True, "content": _json_content(_ref("Transaction"))},
                "responses": {
                    **_ok("committed (already, or within the wait)", _ref("TxCommitted")),
                    **_ok("accepted, pending", _ref("TxPending"), "202"),
                    **_E400,
                    **_E406,
                    **_E413,
                    **_E429,
                    "503": _error("the node diverged (diverged): it serves no writes"),
                },
            }
        },
        "/v1/txs": {
            "post": {
                "operationId": "submitTxs",
                "summary": "Submit up to 1,000 transactions",
                "requestBody": {
                    "required": True,
                    "content": _json_content(
                        {
                            "type": "array",
                            "maxItems": 1000,
                            "items": {
                                "description": "a Transaction (see that schema); an item that "
                                "is not one gets its own error in the answer, in its place",
                            },
                        }
                    ),
                },
                "responses": {
                    **_ok(
                        "one result per item, in order",
                        {"type": "array", "items": _ref("TxItemResult")},
                        "202",
                    ),
                    **_E400,
                    **_E406,
                    **_E413,
                    "503": _error("the node diverged (diverged): it serves no writes"),
                },
            }
        },
        "/v1/tx/{tx_id}": {
            "get": {
                "operationId": "getTx",
                "summary": "A transaction's status, with its receipt once committed",
                "parameters": [_path_param("tx_id", _ref("Hash"), "h(JCS(body))")],
                "responses": {
                    **_ok(
                        "committed or pending",
                        {"oneOf": [_ref("TxCommitted"), _ref("TxPending")]},
                    ),
                    **_E400,
                    **_E404,
                    **_E406,
                },
            }
        },
        "/v1/blocks/{seq}": {
            "get": {
                "operationId": "getBlock",
                "summary": "A committed block",
                "parameters": [_path_param("seq", _SEQ, "sequence number")],
                "responses": {**_ok("the block", _ref("Block")), **_E400, **_E404, **_E406},
            }
        },
        "/v1/state/{key}": {
            "get": {
                "operationId": "getState",
                "summary": "A key's value, version and owner",
                "parameters": [_path_param("key", _KEY, "the key, URL-encoded"), *_READ_PARAMS],
                "responses": {
                    "200": {
                        "description": "present (or, with proof=true, also absent)",
                        "content": _json_content(
                            {"oneOf": [_ref("StateEntry"), _ref("ProvenStateEntry")]}
                        ),
                    },
                    **_E400,
                    **_E404,
                    **_E406,
                    **_E503,
                },
            }
        },
        "/v1/accounts/{pubkey}": {
            "get": {
                "operationId": "getAccount",
                "summary": "An account's balance",
                "parameters": [
                    _path_param("pubkey", _ref("PublicKey"), "client public key"),
                    *_READ_PARAMS,
                ],
                "responses": {
                    "200": {
                        "description": "the balance",
                        "content": _json_content(
                            {"oneOf": [_ref("Account"), _ref("ProvenAccount")]}
                        ),
                    },
                    **_E400,
                    **_E406,
                    **_E503,
                },
            }
        },
        "/v1/status": {
            "get": {
                "operationId": "getStatus",
                "summary": "The node's view of consensus and its ledger head",
                "responses": {**_ok("status", _ref("Status")), **_E400, **_E406},
            }
        },
        "/v1/events": {
            "get": {
                "operationId": "streamEvents",
                "summary": "Server-Sent Events: one `block` event per committed block",
                "description": "Each event is `event: block`, `id: <seq>`, `data: <BlockEvent "
                "JSON>`. With from_seq (or a Last-Event-ID header) the stream replays the "
                "ledger from there, then continues live. A subscriber that falls too far "
                "behind is disconnected and may reconnect with from_seq.",
                "parameters": [
                    {
                        "name": "from_seq",
                        "in": "query",
                        "required": False,
                        "schema": _UINT,
                        "description": "replay from this sequence number",
                    }
                ],
                "responses": {
                    "200": {
                        "description": "an endless event stream; data is a BlockEvent",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_E400,
                    **_E406,
                    **_E429,
                },
            }
        },
        "/v1/evidence": {
            "get": {
                "operationId": "getEvidence",
                "summary": "Misbehaviour evidence this node observed (spec §7)",
                "description": "Each item proves that one validator signed two conflicting "
                "statements; check it with `phalanx audit verify-evidence`. Kinds: commit, "
                "execution, pre_prepare, prepare (ledger/evidence.py). Bounded list.",
                "responses": {**_ok("the evidence", _EVIDENCE_LIST), **_E400},
            }
        },
        **_operator_paths(),
        "/metrics": {
            "get": {
                "operationId": "getMetrics",
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_E400,
                    **_E406,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "getOpenapi",
                "summary": "This document",
                "responses": {**_ok("OpenAPI 3", {"type": "object"}), **_E400, **_E406},
            }
        },
    }


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the OpenAPI document."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Phalanx node API",
            "version": API_VERSION,
            "description": "The HTTP API of a Phalanx v1 node (spec §6). Errors always have "
            'the body {"error": code, "detail": sentence} and a 4xx status; a 5xx is a bug. '
            "Unknown fields, floats and invalid JSON are refused.",
        },
        "paths": _paths(),
        "components": {"schemas": _schemas()},
    }
