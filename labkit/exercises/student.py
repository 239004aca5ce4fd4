"""One source, two builds: the committed notebooks hold the solutions; the student build hides them.

In a code cell, a solution region is marked like this (the markers are comments, so the
committed notebook runs as the solution build)::

    # BEGIN SOLUTION
    # HINT: scale by 2**frac, round, clamp, scale back
    # STUB: raise NotImplementedError("your turn")
    return torch.clamp(torch.round(x * 2**frac), lo, hi) / 2**frac
    # END SOLUTION

The student build replaces each region by its hints (kept as ``# HINT:`` comments) and its
stub lines (uncommented), at the indentation of the ``# BEGIN SOLUTION`` line. Every region
needs at least one STUB and one HINT line, so no student copy is left without a starting
point. Cells are otherwise unchanged; outputs are cleared, and relative links in the markdown
are rewritten to point at the same files from wherever the copies are written.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

BEGIN, END, STUB, HINT = "# BEGIN SOLUTION", "# END SOLUTION", "# STUB:", "# HINT:"
_MARKER = re.compile(r"^(\s*)(# BEGIN SOLUTION|# END SOLUTION|# STUB:|# HINT:)(.*)$")


class SolutionMarkerError(ValueError):
    """A solution region that is not closed, nested, or lacks a stub or a hint."""


def _strip_one_space(text: str) -> str:
    return text[1:] if text.startswith(" ") else text


def student_source(source: str, where: str = "cell") -> str:
    """The student version of one cell's source (unchanged when it has no solution region)."""
    out, region, indent, start = [], None, "", 0
    for number, line in enumerate(source.splitlines(), 1):
        m = _MARKER.match(line)
        kind = m.group(2) if m else None
        if kind == BEGIN:
            if region is not None:
                raise SolutionMarkerError(f"{where}, line {number}: '{BEGIN}' inside the region opened on line {start}")
            region, indent, start = {"stub": [], "hint": []}, m.group(1), number
        elif kind == END:
            if region is None:
                raise SolutionMarkerError(f"{where}, line {number}: '{END}' without a '{BEGIN}'")
            for key, marker in (("stub", STUB), ("hint", HINT)):
                if not region[key]:
                    raise SolutionMarkerError(f"{where}, the region on lines {start}-{number} has no '{marker}' line")
            out += [f"{indent}{HINT} {h}" for h in region["hint"]]
            out += [f"{indent}{s}" if s.strip() else "" for s in region["stub"]]
            region = None
        elif region is not None and kind == STUB:
            region["stub"].append(_strip_one_space(m.group(3)))
        elif region is not None and kind == HINT:
            region["hint"].append(m.group(3).strip())
        elif region is None:
            out.append(line)
        # other lines inside a region are the solution: left out
    if region is not None:
        raise SolutionMarkerError(f"{where}: the region opened on line {start} has no '{END}'")
    return "\n".join(out) + ("\n" if source.endswith("\n") else "")


def has_solution(source: str) -> bool:
    return any((m := _MARKER.match(line)) and m.group(2) == BEGIN for line in source.splitlines())


def student_notebook(nb: dict, name: str = "notebook") -> dict:
    """A copy of the notebook JSON with every solution region replaced and outputs cleared."""
    nb = json.loads(json.dumps(nb))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if has_solution(source) or END in source:
            source = student_source(source, where=f"{name} cell {i}")
        cell["source"] = source.splitlines(keepends=True)
        cell["outputs"], cell["execution_count"] = [], None
    nb.setdefault("metadata", {})["labkit"] = {"build": "student"}
    return nb


_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|#|/)([^)\s]+)\)")


def relink(nb: dict, source_dir: Path, out_dir: Path) -> dict:
    """Point the markdown cells' relative links (``[data](../data/README.md)``) at the same files
    from ``out_dir``, so a student copy written elsewhere keeps working links. Links to a sibling
    numbered notebook stay as they are: they reach its student copy."""
    def fix(m):
        if re.fullmatch(r"[0-9][0-9]_[^/]*\.ipynb(#.*)?", m.group(1)):
            return m.group(0)  # a sibling notebook: its student copy sits next to this one
        target = os.path.relpath(Path(source_dir).resolve() / m.group(1), Path(out_dir).resolve())
        return f"]({Path(target).as_posix()})"
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            cell["source"] = _LINK.sub(fix, text).splitlines(keepends=True)
    return nb


def count_regions(nb: dict) -> int:
    return sum(has_solution("".join(c["source"])) for c in nb["cells"] if c["cell_type"] == "code")


def write_student_build(output_dir=None, only=None) -> list[Path]:
    """Write the student copies of the numbered notebooks (default: ``notebooks/student/``)."""
    from ..notebooks import list_notebooks, notebook_dir
    out_dir = Path(output_dir) if output_dir else notebook_dir() / "student"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for book in list_notebooks(only):
        nb = relink(student_notebook(json.loads(book.read_text()), book.name), book.parent, out_dir)
        target = out_dir / book.name
        target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        written.append(target)
    return written
