"""The numbered notebooks: each runs end to end in quick mode; the committed copies are clean.

New notebooks in ``notebooks/`` (``NN_name.ipynb``) are picked up automatically.
"""

import ast
import json
import re
import time

import pytest

from labkit.notebooks import list_notebooks, run_notebook
from labkit.paths import figures_dir

NOTEBOOKS = list_notebooks()
IDS = [p.stem for p in NOTEBOOKS]


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _parameters(path) -> dict:
    """The literal assignments of the cell tagged ``parameters``."""
    tagged = [c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters', found {len(tagged)}"
    tree = ast.parse("".join(tagged[0]["source"]))
    return {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def test_there_are_numbered_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS][:3] == ["01", "02", "03"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_notebook_has_no_outputs(path):
    for i, cell in enumerate(_cells(path)):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs: clear them before committing"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_has_papermill_parameters(path):
    params = _parameters(path)
    assert params.get("dataset") in ("jsc-synthetic", "jsc", "auto"), params
    assert params.get("quick") is False, "a student opening the notebook gets the full run; tests pass quick=True"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_in_quick_mode(path, tmp_path):
    start = time.time()
    out = tmp_path / path.name
    run_notebook(path, out, {"dataset": "jsc-synthetic", "quick": True})  # raises on any failing cell
    cells = _cells(out)
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(c["execution_count"] is not None for c in code), "some cells did not run"
    injected = [c for c in cells if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    assert injected and "quick = True" in "".join(injected[0]["source"])
    outputs = json.dumps([c.get("outputs", []) for c in code])
    # the committed notebooks are the solution build: every exercise check passes
    checks = ["".join("".join(o.get("data", {}).get("text/plain", o.get("text", ""))) for o in c.get("outputs", []))
              for c in code if "check" in c.get("metadata", {}).get("tags", [])]
    assert checks, "every notebook has exercises with check cells"
    assert all(text.startswith("✓") for text in checks), checks
    assert "SYNTHETIC" in outputs, "the notebook must say its results come from synthetic data"
    # every figure it saves under a literal name is written (to figures/, here a temp folder)
    sources = "\n".join("".join(c["source"]) for c in code)
    for name in re.findall(r'save_figure\(\s*\w+\s*,\s*"([^"{}]+)"', sources):
        png = figures_dir() / f"{name}.png"
        assert png.is_file() and png.stat().st_mtime >= start - 1, f"{path.name} did not write {png}"
