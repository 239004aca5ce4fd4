"""Each notebook says where it sits, where its code is, how to get the real data and see the logs;
every link in those cells points at something that exists."""

import json
import re
from pathlib import Path

import pytest

from labkit.notebooks import list_notebooks

NOTEBOOKS = list_notebooks()
ROOT = Path(__file__).resolve().parents[1]


def _guide(path) -> str:
    cells = json.loads(path.read_text())["cells"]
    found = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"
             and "".join(c["source"]).startswith("**Where you are.**")]
    assert len(found) == 1, f"{path.name}: expected one 'Where you are' cell"
    return found[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_guide_links_previous_next_data_source_and_tensorboard(path):
    text = _guide(path)
    i = NOTEBOOKS.index(path)
    if i:
        assert f"({NOTEBOOKS[i - 1].name})" in text
    if i + 1 < len(NOTEBOOKS):
        assert f"({NOTEBOOKS[i + 1].name})" in text
    assert "(../data/README.md)" in text and 'dataset = "jsc"' in text
    assert "tensorboard --logdir" in text
    targets = re.findall(r"\]\(([^)]+)\)", text)
    sources = [t for t in targets if t.startswith("../labkit/")]
    assert sources, "no link to the labkit source doing the work"
    for target in targets:
        assert (path.parent / target).exists(), f"{path.name} links to a missing {target}"


def test_quantisation_notebook_explains_the_basics_before_using_them():
    cells = ["".join(c["source"]) for c in json.loads((ROOT / "notebooks" / "05_quantisation.ipynb").read_text())["cells"]]
    basics = next(i for i, c in enumerate(cells) if c.startswith("## 0. Basics"))
    first_use = next(i for i, c in enumerate(cells) if c.startswith("## 1."))
    assert basics < first_use
    for words in ("step", "range", "saturat", "[2, 2]", "[-0.5, 0.25]", "straight-through", "exponent bias",
                  "Why quantise"):
        assert words in cells[basics], words
