"""The audit's step runner and its strict verifier."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from crypto.signing import Ed25519Signer
from ledger.audit.pool import (
    SigCheck,
    SignaturePool,
    WorkerLostError,
    can_fork,
    run_steps,
    verify_signed,
)


def test_verify_signed_agrees_with_wycheproof(vectors_dir: Path) -> None:
    """The audit verifies raw bytes itself: it must be exactly as strict as crypto.signing."""
    doc = json.loads((vectors_dir / "ed25519" / "wycheproof_ed25519_test.json").read_text())
    count = 0
    for group in doc["testGroups"]:
        key = bytes.fromhex(group["publicKey"]["pk"])
        for test in group["tests"]:
            signed = bytes.fromhex(test["sig"]) + bytes.fromhex(test["msg"])
            expected = test["result"] == "valid"
            assert verify_signed(signed, key) == expected, test["tcId"]
            # The runner agrees with it.
            failed = run_steps(iter([[(signed, key, test["tcId"])]]), 1)
            assert failed == ([] if expected else [test["tcId"]])
            count += 1
    assert count == 151


def _checks(count: int, bad: set[int]) -> Iterator[list[SigCheck]]:
    signer = Ed25519Signer(bytes(32))
    key = bytes.fromhex(signer.public_key)
    for i in range(count):
        message = f"m{i}".encode()
        signature = bytes.fromhex(signer.sign_bytes(message))
        if i in bad:
            message += b"!"
        yield [(signature + message, key, i)] if i % 3 else []


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_run_steps_returns_every_bad_signature(threads: int) -> None:
    bad = {3, 4, 7, 50, 99}
    failed = run_steps(_checks(100, bad), threads)
    assert sorted(failed) == sorted(i for i in bad if i % 3)


def test_run_steps_raises_what_a_step_raised_and_stops() -> None:
    steps_taken = []

    def steps() -> Iterator[list[SigCheck]]:
        for i in range(1000):
            steps_taken.append(i)
            if i == 10:
                raise RuntimeError("step 10 broke")
            yield []

    with pytest.raises(RuntimeError, match="step 10 broke"):
        run_steps(steps(), 3)
    assert steps_taken[-1] == 10
    assert threading.active_count() == 1 or not any(
        t.name.startswith("phalanx-audit") for t in threading.enumerate()
    )


def test_thread_count_is_bounded() -> None:
    with pytest.raises(ValueError):
        run_steps(iter([]), 0)
    with pytest.raises(ValueError):
        run_steps(iter([]), 65)


@pytest.mark.parametrize("processes", [True, False])
def test_signature_pool_returns_every_bad_signature_and_is_reusable(processes: bool) -> None:
    with SignaturePool(2, processes=processes) as pool:
        assert pool.processes is processes
        for bad in ({1, 2, 500}, set(), {7}):
            failed = pool.run(_checks(600, bad))
            assert sorted(failed) == sorted(i for i in bad if i % 3)


def test_signature_pool_raises_a_step_error_and_stays_usable() -> None:
    def steps() -> Iterator[list[SigCheck]]:
        yield from _checks(200, {5})
        raise RuntimeError("broken step")

    with SignaturePool(2, processes=True) as pool:
        with pytest.raises(RuntimeError, match="broken step"):
            pool.run(steps())
        assert pool.run(_checks(100, {4})) == [4]


def test_a_lost_worker_process_is_an_error() -> None:
    with SignaturePool(2, processes=True) as pool:
        pool._procs[0].kill()
        pool._procs[0].join()
        with pytest.raises(WorkerLostError):
            pool.run(_checks(300, set()))


def test_pool_mode_follows_fork_safety() -> None:
    assert SignaturePool(2).processes is can_fork()
    stop = threading.Event()
    extra = threading.Thread(target=stop.wait)
    extra.start()
    try:
        assert not can_fork()  # never fork a process that runs other threads
        assert SignaturePool(2).processes is False
    finally:
        stop.set()
        extra.join()
    with pytest.raises(ValueError):
        SignaturePool(0)
