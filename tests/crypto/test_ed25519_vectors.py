"""Strict Ed25519 (spec §1) against external corpora: RFC 8032 section 7.1, the full SUPERCOP
``sign.input`` and Wycheproof's EdDSA verification cases. Read in place from ../shared/vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crypto.signing import Ed25519Signer, is_valid_public_key, verify_bytes

SIGN_INPUT_LINES = 1024
WYCHEPROOF_TESTS = 151
WYCHEPROOF_VALID = 88


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_rfc8032_section_7_1(vectors_dir: Path) -> None:
    doc = json.loads((vectors_dir / "ed25519" / "rfc8032_section7.1_ed25519.json").read_text())
    names = []
    for v in doc["vectors"]:
        signer = Ed25519Signer(bytes.fromhex(v["secret_key"]))
        message = bytes.fromhex(v["message"])
        assert signer.public_key == v["public_key"], v["name"]
        assert signer.sign_bytes(message) == v["signature"], v["name"]
        assert verify_bytes(v["public_key"], message, v["signature"]), v["name"]
        bad_sig = _flip(bytes.fromhex(v["signature"]), 0).hex()
        assert not verify_bytes(v["public_key"], message, bad_sig), v["name"]
        names.append(v["name"])
    assert names == ["TEST 1", "TEST 2", "TEST 3", "TEST 1024", "TEST SHA(abc)"]


def test_sign_input_every_line_signs_and_verifies(vectors_dir: Path) -> None:
    """sign.input line N: ``sk(seed||pk):pk:msg:sig||msg:``, with a message of N - 1 bytes."""
    lines = (vectors_dir / "ed25519" / "sign.input").read_text().splitlines()
    count = 0
    for number, line in enumerate(lines, start=1):
        sk, pk, msg, signed, empty = line.split(":")
        assert empty == ""
        message = bytes.fromhex(msg)
        assert len(message) == number - 1
        signature = bytes.fromhex(signed)[:64].hex()
        assert bytes.fromhex(signed)[64:] == message
        signer = Ed25519Signer(bytes.fromhex(sk)[:32])
        assert signer.public_key == pk == sk[64:], f"line {number}"
        assert signer.sign_bytes(message) == signature, f"line {number}"
        assert verify_bytes(pk, message, signature), f"line {number}"
        if message:
            assert not verify_bytes(pk, _flip(message, len(message) - 1), signature)
        assert not verify_bytes(pk, message, _flip(bytes.fromhex(signature), 40).hex())
        count += 1
    assert count == SIGN_INPUT_LINES


def _wycheproof_cases(vectors_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    doc = json.loads((vectors_dir / "ed25519" / "wycheproof_ed25519_test.json").read_text())
    return [
        (group["publicKey"]["pk"], test) for group in doc["testGroups"] for test in group["tests"]
    ]


def test_wycheproof_valid_accepted_invalid_rejected(vectors_dir: Path) -> None:
    cases = _wycheproof_cases(vectors_dir)
    assert len(cases) == WYCHEPROOF_TESTS
    valid = 0
    for pk, test in cases:
        accepted = verify_bytes(pk, bytes.fromhex(test["msg"]), test["sig"])
        assert accepted == (test["result"] == "valid"), (test["tcId"], test["comment"])
        valid += accepted
    assert valid == WYCHEPROOF_VALID


@pytest.mark.parametrize(
    "flag",
    ["SignatureMalleability", "InvalidEncoding", "TruncatedSignature", "SignatureWithGarbage"],
)
def test_wycheproof_strictness_classes_are_present_and_rejected(
    vectors_dir: Path, flag: str
) -> None:
    """The classes the spec names (S >= L, bad encodings, wrong lengths) are really exercised."""
    cases = [(pk, t) for pk, t in _wycheproof_cases(vectors_dir) if flag in t["flags"]]
    assert cases
    for pk, test in cases:
        assert test["result"] == "invalid"
        assert not verify_bytes(pk, bytes.fromhex(test["msg"]), test["sig"]), test["tcId"]


SMALL_ORDER_POINTS = [
    "0100000000000000000000000000000000000000000000000000000000000000",  # identity
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
    "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
]


@pytest.mark.parametrize("point", SMALL_ORDER_POINTS)
def test_small_order_public_keys_are_refused(point: str) -> None:
    assert not is_valid_public_key(point)
    # Whatever the signature, a small-order key never verifies (libsodium refuses the key).
    assert not verify_bytes(point, b"m", "00" * 64)
    assert not verify_bytes(point, b"m", "01" + "00" * 63)


def test_malformed_inputs_are_false_not_errors() -> None:
    signer = Ed25519Signer(bytes(32))
    sig = signer.sign_bytes(b"m")
    assert verify_bytes(signer.public_key, b"m", sig)
    assert not verify_bytes(signer.public_key.upper(), b"m", sig)
    assert not verify_bytes(signer.public_key, b"m", sig[:-2])
    assert not verify_bytes(signer.public_key, b"m", sig + "00")
    assert not verify_bytes(signer.public_key[:-2], b"m", sig)
    assert not verify_bytes(signer.public_key, b"m", sig.upper())
