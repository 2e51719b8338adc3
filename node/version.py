"""The version of this build, as installed (``pyproject.toml``), for ``phalanx --version``,
``/v1/status`` and the ``phalanx_build_info`` metric."""

from __future__ import annotations

import platform
from functools import cache
from importlib.metadata import PackageNotFoundError, version


@cache
def phalanx_version() -> str:
    try:
        return version("phalanx")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def python_version() -> str:
    return platform.python_version()
