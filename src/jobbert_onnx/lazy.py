"""Names a package exports but imports only on first use (PEP 562), so that importing the package
pulls in none of its heavy dependencies (torch for the exporter, pyarrow, starlette)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib import import_module
from typing import Any


def lazy_exports(package: str, homes: dict[str, str],
                 listed: Iterable[str] = ()) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, whose name N lives in the submodule `homes[N]`
    (relative, e.g. ".api"); `__dir__` lists these names and `listed`, those the package defines itself."""
    listed = tuple(listed)

    def __getattr__(name: str) -> Any:
        if name in homes:
            return getattr(import_module(homes[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*homes, *listed})

    return __getattr__, __dir__
