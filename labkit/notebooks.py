"""Execute the numbered notebooks end to end with papermill (``make run``, and the tests).

Every notebook has a papermill ``parameters`` cell with at least ``dataset`` and ``quick``.
Quick mode uses a small slice of the data and few epochs, so each notebook runs in well
under two minutes; full mode reproduces the lab at full size. Executed copies go to
``notebooks/executed/`` (ignored by git); the committed notebooks stay output-free.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd

from .paths import project_root
from .progress import STREAM_ENV


def _has_notebooks(folder: Path) -> bool:
    return any(folder.glob("[0-9][0-9]_*.ipynb"))


def notebook_dir() -> Path:
    """The numbered notebooks' folder: ``notebooks/`` of the checkout this package runs from,
    else of the project root (``LABKIT_HOME`` moves data and outputs, not the notebooks).
    FileNotFoundError in one line when neither has any."""
    here = Path(__file__).resolve().parent.parent / "notebooks"
    candidates = [here, project_root() / "notebooks"]
    for folder in candidates:
        if _has_notebooks(folder):
            return folder
    raise FileNotFoundError("no notebooks (NN_name.ipynb) found in "
                            + " or ".join(dict.fromkeys(str(c) for c in candidates))
                            + "; run `labkit notebooks` from a labkit checkout")


def list_notebooks(only=None) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``) in order, optionally filtered by prefix."""
    books = sorted(p for p in notebook_dir().glob("[0-9][0-9]_*.ipynb"))
    if only:
        books = [p for p in books if any(p.name.startswith(o) for o in only)]
        if not books:
            raise ValueError(f"no notebook matches {only}; available: "
                             f"{', '.join(p.name for p in list_notebooks())}")
    return books


def run_notebook(path, output, parameters: dict, progress: bool = False):
    import papermill as pm
    output.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(path), str(output), parameters=parameters, cwd=str(Path(path).parent),
                        kernel_name="python3", progress_bar=progress, log_output=False)


def run_notebooks(quick: bool = False, dataset: str = "auto", only=None, output_dir=None,
                  extra_parameters: dict | None = None) -> pd.DataFrame:
    """Execute the notebooks in order; returns one row per notebook with its wall time."""
    from .data import choose_dataset
    dataset = choose_dataset(dataset)
    out_dir = Path(output_dir) if output_dir else notebook_dir() / "executed"
    books = list_notebooks(only)
    rows = []
    # Kernels inherit the environment: with this set, sweeps print "[labkit] sweep ...: 120/360
    # epochs" lines to their real stderr, which is this terminal (labkit.progress).
    previous = os.environ.get(STREAM_ENV)
    os.environ[STREAM_ENV] = "1"
    try:
        for n, book in enumerate(books, 1):
            params = {"dataset": dataset, "quick": quick, **(extra_parameters or {})}
            print(f"[labkit] {n}/{len(books)} executing {book.name} (dataset={dataset}, quick={quick}) ...",
                  flush=True)
            start = time.perf_counter()
            run_notebook(book, out_dir / book.name, params, progress=True)
            seconds = round(time.perf_counter() - start, 1)
            print(f"[labkit] {n}/{len(books)} {book.name} done in {seconds} s", flush=True)
            rows.append({"notebook": book.name, "seconds": seconds, "output": str(out_dir / book.name)})
    finally:
        if previous is None:
            os.environ.pop(STREAM_ENV, None)
        else:
            os.environ[STREAM_ENV] = previous
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    return table
