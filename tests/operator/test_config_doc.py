"""docs/CONFIG.md is what node/config_doc.py generates from the models of node/config.py."""

from __future__ import annotations

from pathlib import Path

from node.config import NodeConfig
from node.config_doc import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"


def test_config_reference_matches_the_models() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/CONFIG.md is out of date with node/config.py: run scripts/config-doc"
    )


def test_every_field_and_its_variable_is_listed() -> None:
    text = render()
    for name, info in NodeConfig.model_fields.items():
        section = getattr(info.annotation, "model_fields", None)
        if section is None:
            assert f"`PHALANX_{name.upper()}`" in text
        else:
            for sub in section:
                assert f"`PHALANX_{name.upper()}__{sub.upper()}`" in text
