"""One source, two builds: the student copies hide every solution behind a stub and a hint,
and in them every check says "not yet: ..." while the rest of the notebook still runs.

(The solution build, the committed notebooks, is executed by tests/test_notebooks.py, which also
asserts that every check there passes.)
"""

import ast
import json
import re
import subprocess
import sys

import pytest

from labkit.exercises.student import (SolutionMarkerError, count_regions, has_solution, relink, student_notebook,
                                      student_source, write_student_build)
from labkit.notebooks import list_notebooks, run_notebook

NOTEBOOKS = list_notebooks()
IDS = [p.stem for p in NOTEBOOKS]

CELL = '''def q(x, width, frac):
    """doc"""
    # BEGIN SOLUTION
    # HINT: scale, round, clamp
    # STUB: raise NotImplementedError("your turn")
    scaled = round(x * 2 ** frac)
    return scaled / 2 ** frac
    # END SOLUTION
'''


def test_student_source_replaces_the_region_with_hint_and_stub():
    out = student_source(CELL)
    assert out == ('def q(x, width, frac):\n    """doc"""\n    # HINT: scale, round, clamp\n'
                   '    raise NotImplementedError("your turn")\n')
    assert "scaled" not in out and "SOLUTION" not in out


def test_student_source_keeps_relative_indentation_of_stubs_and_code_outside():
    src = ("x = 1\n# BEGIN SOLUTION\n# HINT: a loop\n# STUB: for i in range(3):\n# STUB:     pass\n"
           "y = sum(range(3))\n# END SOLUTION\nprint(x)")
    assert student_source(src) == "x = 1\n# HINT: a loop\nfor i in range(3):\n    pass\nprint(x)"
    assert student_source("no regions\n") == "no regions\n"


@pytest.mark.parametrize("src, phrase", [
    ("# BEGIN SOLUTION\n# STUB: pass\n# HINT: h\n", "has no '# END SOLUTION'"),
    ("# END SOLUTION\n", "without a '# BEGIN SOLUTION'"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n", "inside the region opened on line 1"),
    ("# BEGIN SOLUTION\n# HINT: h\nx = 1\n# END SOLUTION\n", "no '# STUB:' line"),
    ("# BEGIN SOLUTION\n# STUB: pass\nx = 1\n# END SOLUTION\n", "no '# HINT:' line"),
])
def test_malformed_regions_are_refused_with_the_place(src, phrase):
    with pytest.raises(SolutionMarkerError, match="cell 3") as err:
        student_source(src, where="cell 3")
    assert phrase in str(err.value)


def _code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _tags(cell):
    return cell.get("metadata", {}).get("tags", [])


def _python(source: str) -> str:
    return "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("!", "%")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_notebook_has_exercises_each_followed_by_a_check(path):
    nb = json.loads(path.read_text())
    cells = _code_cells(nb)
    exercises = [i for i, c in enumerate(cells) if "exercise" in _tags(c)]
    assert exercises, f"{path.name} has no exercise cell (tag 'exercise')"
    for i in exercises:
        assert has_solution("".join(cells[i]["source"])), f"{path.name}: exercise cell without a solution region"
        nxt = cells[i + 1] if i + 1 < len(cells) else None
        assert nxt is not None and "check" in _tags(nxt), f"{path.name}: exercise cell {i} is not followed by a check"
        assert "check_" in "".join(nxt["source"]) and "labkit.exercises" in "".join(nxt["source"])
    # solution regions live only in exercise cells, so nothing else differs between the builds
    assert count_regions(nb) == len(exercises)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_student_copy_hides_the_solutions_and_is_valid_python(path):
    nb = json.loads(path.read_text())
    student = student_notebook(nb, path.name)
    assert len(student["cells"]) == len(nb["cells"])
    for ours, theirs in zip(_code_cells(nb), _code_cells(student)):
        src, out = "".join(ours["source"]), "".join(theirs["source"])
        ast.parse(_python(out))
        if "exercise" not in _tags(ours):
            assert src == out
            continue
        assert "SOLUTION" not in out and "# HINT:" in out and "# STUB:" not in out
        solution = student_source(src).splitlines()
        hidden = [line for line in src.splitlines() if line.strip() and line not in solution
                  and not line.strip().startswith("#")]
        assert hidden and not any(line in out.splitlines() for line in hidden)


def test_cli_writes_the_student_build(tmp_path):
    run = subprocess.run([sys.executable, "-m", "labkit", "notebooks", "--student", "--only", "05",
                          "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["05_quantisation.ipynb"]
    nb = json.loads((tmp_path / "05_quantisation.ipynb").read_text())
    assert nb["metadata"]["labkit"] == {"build": "student"} and count_regions(nb) == 0
    assert "student copy" in run.stdout


def test_written_build_matches_student_notebook(tmp_path):
    (path,) = write_student_build(tmp_path, only=["01"])
    expected = relink(student_notebook(json.loads(NOTEBOOKS[0].read_text())), NOTEBOOKS[0].parent, tmp_path)
    assert json.loads(path.read_text()) == expected


def test_relative_links_still_reach_their_files(tmp_path):
    source, out = tmp_path / "notebooks", tmp_path / "notebooks" / "student"
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": [
        "See [the data](../data/README.md), [train.py](../labkit/train.py#L10), [05](05_quantisation.ipynb),\n",
        "[MASE](https://github.com/DeepWok/mase) and [above](#top).\n"]}]}
    text = "".join(relink(nb, source, out)["cells"][0]["source"])
    assert text == ("See [the data](../../data/README.md), [train.py](../../labkit/train.py#L10), "
                    "[05](05_quantisation.ipynb),\n[MASE](https://github.com/DeepWok/mase) and [above](#top).\n")


def test_written_copies_link_to_real_files(tmp_path):
    for path in write_student_build(tmp_path / "a" / "b"):
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "markdown":
                for target in re.findall(r"\]\((?![a-z][a-z0-9+.-]*:|#|/)([^)\s#]+)", "".join(cell["source"])):
                    assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


def check_outputs(nb) -> list[str]:
    """The text each check cell printed (its Verdict), one entry per check cell."""
    texts = []
    for cell in _code_cells(nb):
        if "check" in _tags(cell):
            parts = [o.get("data", {}).get("text/plain", o.get("text", "")) for o in cell.get("outputs", [])]
            texts.append("".join("".join(p) for p in parts))
    return texts


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_student_build_runs_and_every_check_says_not_yet(path, tmp_path):
    (student,) = write_student_build(tmp_path / "student", only=[path.name[:2]])
    out = tmp_path / "executed" / path.name
    run_notebook(student, out, {"dataset": "jsc-synthetic", "quick": True})  # raises on any failing cell
    nb = json.loads(out.read_text())
    assert all(c["execution_count"] is not None for c in _code_cells(nb)), "some cells did not run"
    assert not any(o.get("output_type") == "error" for c in _code_cells(nb) for o in c.get("outputs", []))
    verdicts = check_outputs(nb)
    assert verdicts
    for text in verdicts:
        assert text.startswith("not yet:") and "✓" not in text and "Traceback" not in text, text
