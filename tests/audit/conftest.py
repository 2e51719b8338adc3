from __future__ import annotations

import pytest

from tests.audit.builder import Built, build_ledger


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The standard ledger, built once per module; tests that damage it work on a copy."""
    return build_ledger(tmp_path_factory.mktemp("built") / "ledger")
