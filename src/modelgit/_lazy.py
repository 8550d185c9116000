"""Packages whose public names load their module on first use.

The CLI's parser imports every command's package; most of them would pull torch, transformers,
fastapi or pyarrow (seconds) at import. A package lists ``{name: submodule}`` and gets a module
``__getattr__`` that imports the submodule when the name is first read, and keeps the value.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["lazy_exports"]


def lazy_exports(package: str, table: dict[str, str]):
    """``(__getattr__, __all__)`` for ``package`` whose names ``table`` maps to submodules.

    Example (in a package's ``__init__``)::

        __getattr__, __all__ = lazy_exports(__name__, {"predict": "run", ...})
    """

    def __getattr__(name: str):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{table[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__, sorted(table)
