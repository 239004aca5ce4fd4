"""A tiny name -> object registry, shared by models, datasets and quantisers.

    MODELS = Registry("model")

    @MODELS.register("jsc-tiny")
    def jsc_tiny(info): ...

    MODELS.get("jsc-tiny")        # -> the function
    MODELS.get("jsc-tyni")        # ValueError naming the known models
"""

from __future__ import annotations

import difflib


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, object] = {}

    def register(self, name: str, obj=None, *, overwrite: bool = True):
        """Register ``obj`` under ``name``; usable as ``@registry.register("name")``.

        Re-registering a name replaces the old entry (so re-running a notebook cell
        that defines a model just works) unless ``overwrite=False``.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def add(o):
            if not overwrite and name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = o
            return o

        return add if obj is None else add(obj)

    def get(self, name: str):
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(self.unknown_message(name)) from None

    def unknown_message(self, name) -> str:
        hint = difflib.get_close_matches(str(name), self.names(), n=1)
        did = f" Did you mean {hint[0]!r}?" if hint else ""
        return f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}.{did}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
