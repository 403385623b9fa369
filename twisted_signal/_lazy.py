"""
Names a package exports but imports only on first use (PEP 562), so that
importing the package loads none of the modules behind them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(
    package: str, namespace: dict[str, Any], homes: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """
    The module-level ``__getattr__`` and ``__dir__`` of `package`, whose
    `namespace` (its ``globals()``) gets each name of `homes` from the
    submodule named there (relative to `package`) the first time it is asked
    for.
    """

    def get(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f".{home}", package), name)
        namespace[name] = value
        return value

    def names() -> list[str]:
        return sorted({*namespace, *homes})

    return get, names
