"""Run every tutorial script end to end, and check each notebook against its script.

Each tutorial runs in its own Python process, as a user would run it, with
`KERAS_COST_FAST=1` for short epoch counts. A tutorial added to `tutorials/`
is picked up without changing this file.
"""

import os
import pathlib
import subprocess
import sys

import pytest

TUTORIALS_DIR = pathlib.Path(__file__).resolve().parent.parent / "tutorials"
SCRIPTS = sorted(TUTORIALS_DIR.glob("[0-9]*.py"))
# Every tutorial trains several models and imports TensorFlow in a fresh
# process, which takes longer than the 20 seconds that mark a test slow.
SLOW_SCRIPTS = [pytest.param(path, id=path.stem, marks=pytest.mark.slow) for path in SCRIPTS]
NOTEBOOK_PAIRS = [pytest.param(path, id=path.stem) for path in SCRIPTS]
TIMEOUT_SECONDS = 600
OUTPUT_TAIL_CHARACTERS = 4000


def test_tutorials_found():
    assert len(SCRIPTS) >= 8


@pytest.mark.parametrize("script", SLOW_SCRIPTS)
def test_tutorial_runs(script, tmp_path):
    environment = dict(
        os.environ,
        KERAS_COST_FAST="1",
        KERAS_COST_TUTORIAL_OUT=str(tmp_path),
        TF_CPP_MIN_LOG_LEVEL="2",
        MPLBACKEND="Agg",
    )
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        env=environment,
        cwd=tmp_path,
    )
    output = (result.stdout + result.stderr)[-OUTPUT_TAIL_CHARACTERS:]
    assert result.returncode == 0, output

    plots = list(tmp_path.glob("*.png"))
    assert plots, f"{script.name} saved no .png plot in {tmp_path}"


@pytest.mark.parametrize("script", NOTEBOOK_PAIRS)
def test_notebook_matches_script(script):
    # Imported here so that a missing jupytext fails this test only, not
    # the collection of the tutorial runs.
    import jupytext

    notebook_path = script.with_suffix(".ipynb")
    assert notebook_path.exists(), (
        f"{notebook_path.name} is missing. Create it with: "
        f"jupytext --sync tutorials/{script.name}"
    )

    from_script = jupytext.read(script)
    from_notebook = jupytext.read(notebook_path)
    script_cells = [(cell.cell_type, cell.source) for cell in from_script.cells]
    notebook_cells = [(cell.cell_type, cell.source) for cell in from_notebook.cells]
    assert notebook_cells == script_cells, (
        f"{notebook_path.name} differs from {script.name}. Regenerate it with: "
        f"jupytext --sync tutorials/{script.name}"
    )
