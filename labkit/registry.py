"""A tiny name -> object registry, shared by models, datasets and quantisers.

    MODELS = Registry("model")

    @MODELS.register("jsc-tiny")
    def jsc_tiny(info): ...

    MODELS.get("jsc-tiny")        # -> the function
    MODELS.get("jsc-tyni")        # ValueError naming the known models
"""

from __future__ import annotations



def edit_distance(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) that turn ``a`` into ``b``."""
    prev2, prev = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1]


def nearest(name: str, names) -> str | None:
    """The known name a typo most likely meant: fewest edits, ties to the one with the same
    letters (``jsc-tyni`` -> ``jsc-tiny``, not ``jsc-toy``); none when all are far off."""
    def score(candidate):
        return (edit_distance(name.lower(), candidate.lower()), sorted(name) != sorted(candidate))
    ranked = sorted(names, key=score)
    if not ranked or score(ranked[0])[0] > max(2, len(name) // 3):
        return None
    return ranked[0]


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
        hint = nearest(str(name), self.names())
        did = f" Did you mean {hint!r}?" if hint else ""
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
