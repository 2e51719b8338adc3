"""A fresh 4-node testnet per test (the tests crash, freeze and wipe nodes); on failure the
tail of every node's log is printed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import Cluster
from tests.recovery import harness


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.stash[_FAILED] = report.failed


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    c = harness.start(tmp_path / "testnet")
    try:
        yield c
    finally:
        if request.node.stash.get(_FAILED, False):
            print(harness.log_tails(c))
        c.down()
