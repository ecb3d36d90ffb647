"""A package's public API, imported on first use, so that `import interp` stays cheap.

>>> __all__, __getattr__, __dir__ = exports("json", {"dumps": "decoder", "JSONDecoder": "decoder"})
>>> __getattr__("JSONDecoder").__name__, __all__
('JSONDecoder', ['JSONDecoder', 'dumps'])
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def exports(package: str, names: dict[str, str]) -> tuple[list[str], Callable[[str], object], Callable]:
    """`__all__`, a module `__getattr__` that imports each name from its submodule (`names[name]`) when it
    is first asked for, and `__dir__`."""

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{names[name]}"), name)

    public = sorted(names)
    return public, __getattr__, lambda: public
