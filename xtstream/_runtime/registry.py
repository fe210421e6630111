"""One registry shape for every pluggable kind (context encoders, heads, tasks, model presets):
a name → entry mapping that plug-ins add to with a decorator, and that imports the modules holding
the built-ins on first lookup (so a plain ``import xtstream`` stays light)."""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Sequence, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """``kind`` names what is registered in error messages; ``error`` is the exception raised;
    ``builtins`` are modules imported on first lookup (they register the built-in entries)."""

    def __init__(self, kind: str, error: type[Exception], builtins: Sequence[str] = ()) -> None:
        self.kind, self.error, self.builtins = kind, error, tuple(builtins)
        self.entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` as ``name``; registering the same entry twice is harmless."""
        if self.entries.get(name, entry) is not entry:
            raise self.error(f"a {self.kind} named {name!r} is already registered")
        self.entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda entry: self.add(name, entry)

    def _load(self) -> None:
        for module in self.builtins:
            importlib.import_module(module)

    def names(self) -> list[str]:
        """Every registered name, built-ins loaded."""
        self._load()
        return sorted(self.entries)

    def get(self, name: str) -> T:
        """The entry registered as ``name``; an unknown name raises ``error`` listing the known."""
        self._load()
        try:
            return self.entries[name]
        except KeyError:
            raise self.error(f"no {self.kind} registered as {name!r}; known: {sorted(self.entries)}") from None

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self.entries
