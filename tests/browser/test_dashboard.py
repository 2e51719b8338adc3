"""The dashboard in a real headless browser: Debian's chromium (/usr/bin/chromium), driven by
playwright-python with that executable (``playwright install`` is never used: no browser
download). ``scripts/test`` installs chromium with apt-get when it is missing and it runs as
root; without it (or without playwright) this test skips and says why.

Against a real 4-node testnet: the page loads with no console error, shows the 4 validators and
the primary, its head seq and committed tx/s move when transactions are submitted, a block
drills down to its transactions, receipt and certificate, and a screenshot is written to
``$PHALANX_TEST_ARTIFACTS`` (default: the system temp dir) as ``phalanx-dashboard.png``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.client import Client, make_tx
from tests.e2e.cluster import Cluster, start_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _browser_or_skip() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright-python is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing: `apt-get install -y chromium` (scripts/test does it when "
            "run as root on Debian)"
        )
    return sync_playwright


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    _browser_or_skip()
    c = start_cluster(tmp_path_factory.mktemp("browser") / "testnet")
    try:
        yield c
    finally:
        c.down()


def _text(page: Any, selector: str) -> str:
    return str(page.locator(selector).inner_text()).strip()


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_dashboard_live_in_chromium(cluster: Cluster) -> None:
    sync_playwright = _browser_or_skip()
    url = cluster.url("node0")
    problems: list[str] = []
    shot = Path(os.environ.get("PHALANX_TEST_ARTIFACTS", tempfile.gettempdir()))
    shot = shot / "phalanx-dashboard.png"
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        except Exception as exc:  # a chromium that cannot start here (no sandbox support...)
            pytest.skip(f"chromium at {CHROMIUM} does not start: {exc}")
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(url + "/", wait_until="load")

            rows = page.locator("#cluster tbody tr")
            _wait(lambda: rows.count() == 4, 20, "4 validator rows")
            names = [rows.nth(i).get_attribute("data-name") for i in range(4)]
            assert names == ["node0", "node1", "node2", "node3"]
            # Every validator's report arrives through node0's peer links within seconds.
            _wait(
                lambda: all(
                    _text(page, f"#cluster tbody tr:nth-child({i + 1}) td:nth-child(5)") == "ok"
                    for i in range(4)
                ),
                30,
                "all 4 validators healthy",
            )
            primary = cluster.primary_name()
            assert _text(page, "#primary") == primary
            seq_before = int(_text(page, "#head-seq"))
            assert _text(page, "#tps") == "0.0"

            client = Client(cluster.url("node1"))
            chain_id = cluster.genesis.chain_id
            for round_ in range(6):
                txs = [
                    make_tx(
                        cluster.client,
                        [{"op": "set", "key": f"browser-{round_}-{i}", "value": i}],
                        chain_id=chain_id,
                    )
                    for i in range(50)
                ]
                answers = client.submit_many(txs)
                assert all("error" not in a for a in answers), answers[:3]
                time.sleep(0.5)
            _wait(lambda: int(_text(page, "#head-seq")) > seq_before, 30, "head seq to move")
            _wait(lambda: float(_text(page, "#tps")) > 0, 30, "tx/s to move")
            # The chart has a line once transactions were committed.
            assert page.locator("#chart-tps path.line").count() == 1

            # Drill down: the newest block with transactions, one of its receipts.
            block_rows = page.locator("#blocks tbody tr")
            _wait(lambda: block_rows.count() > 0, 10, "recent blocks")
            target = next(
                i for i in range(block_rows.count())
                if int(block_rows.nth(i).locator("td").nth(2).inner_text()) > 0
            )  # fmt: skip
            block_rows.nth(target).click()
            page.locator("#detail h3", has_text="commit certificate").wait_for(timeout=10_000)
            page.locator("#detail ol li a").first.click()
            page.locator("#receipt pre").wait_for(timeout=10_000)
            assert '"status": "committed"' in page.locator("#receipt pre").inner_text()
            time.sleep(1.5)  # one more poll drawn before the picture
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    print(f"dashboard screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    assert not problems, problems
