"""Named implementations registered with a decorator: extraction methods, scorer kinds, recovery methods."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from steerscope.errors import SteerscopeError

T = TypeVar("T")


class Registry(dict[str, T]):
    """A name → implementation mapping (insertion order) filled by :meth:`register`.

    ``unknown`` is the error for a name not registered, formatted with ``name`` and ``known``
    (the registered names, sorted and comma-separated).
    """

    def __init__(self, unknown: str):
        super().__init__()
        self.unknown = unknown

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding an implementation under ``name`` (replacing one registered before)."""
        def decorate(obj: T) -> T:
            self[name] = obj
            return obj
        return decorate

    def lookup(self, name: str) -> T:
        """The implementation registered under ``name``; SteerscopeError naming the known ones otherwise."""
        if name not in self:
            raise SteerscopeError(self.unknown.format(name=repr(name), known=", ".join(sorted(self))))
        return self[name]
