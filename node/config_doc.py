"""The configuration reference (docs/CONFIG.md), generated from the pydantic models of
``node.config`` so that it cannot drift: ``scripts/config-doc`` writes it, and
``tests/operator/test_config_doc.py`` fails when the file differs from :func:`render`."""

from __future__ import annotations

import json
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from node.config import ENV_PREFIX, NodeConfig

HEADER = """\
# Configuration reference

Generated from the pydantic models in `node/config.py` by `scripts/config-doc`; do not edit
(`tests/operator/test_config_doc.py` fails when this file and the models disagree).

A node reads one config file (`phalanx node run --config FILE`, JSON, or TOML when the name
ends in `.toml`; `phalanx node init` writes one), then applies environment variables over it:
`PHALANX_<FIELD>` for a top-level field, `PHALANX_<SECTION>__<FIELD>` for a field of a section
(names are case-insensitive; a dict such as `peers` is given as JSON and replaces the whole
value). Relative paths are relative to the config file's directory. Unknown fields are errors.
"""


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _type_name(get_args(annotation)[0])
    if origin is dict:
        key, value = get_args(annotation)
        return f"object of {_type_name(key)} → {_type_name(value)}"
    if origin is not None and str(origin) == "typing.Literal":
        return " \\| ".join(f"`{a}`" for a in get_args(annotation))
    args = get_args(annotation)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return " \\| ".join(_type_name(a) for a in rest) + " \\| null"
    name = getattr(annotation, "__name__", str(annotation))
    return {"HostPort": "HOST:PORT", "Path": "path", "str": "string", "int": "integer"}.get(
        name, name
    )


def _default(info: Any) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
        if isinstance(value, BaseModel):
            return "(section)"
        return f"`{json.dumps(value)}`"
    if info.default is PydanticUndefined:
        return "**required**"
    if info.default is None:
        return "`null`"
    return f"`{json.dumps(info.default, default=str)}`"


def _limits(info: Any) -> str:
    parts = []
    for item in info.metadata:
        for attr, sign in (("ge", "≥"), ("le", "≤"), ("gt", ">"), ("lt", "<")):
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{sign} {value}")
        for attr in ("min_length", "max_length", "pattern"):
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{attr.replace('_', ' ')} {value}")
    return ", ".join(parts)


def _rows(model: type[BaseModel], section: str | None) -> list[str]:
    rows = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            continue
        path = name if section is None else f"{section}.{name}"
        env = ENV_PREFIX + (name if section is None else f"{section}__{name}").upper()
        notes = "; ".join(p for p in (info.description or "", _limits(info)) if p)
        rows.append(
            f"| `{path}` | {_type_name(annotation)} | {_default(info)} | `{env}` | {notes} |"
        )
    return rows


def render() -> str:
    lines = [HEADER]
    table_head = [
        "| field | type | default | environment variable | notes |",
        "|---|---|---|---|---|",
    ]
    lines += ["## Top level", "", *table_head, *_rows(NodeConfig, None), ""]
    for name, info in NodeConfig.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines += [f"## `{name}`", ""]
            if annotation.__doc__ and annotation.__doc__ is not BaseModel.__doc__:
                lines += [" ".join(annotation.__doc__.split()), ""]
            lines += [*table_head, *_rows(annotation, name), ""]
    return "\n".join(lines).rstrip() + "\n"
