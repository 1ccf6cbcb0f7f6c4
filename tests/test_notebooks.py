"""Every stage notebook is committed clean, with one `parameters` cell papermill can read."""

from __future__ import annotations

import nbformat
import pytest

from ovis.pipeline import NOTEBOOKS, notebook_dir, notebook_parameters


@pytest.mark.parametrize("stage", list(NOTEBOOKS))
def test_stage_notebook_is_clean_and_parameterised(stage):
    nb = nbformat.read(notebook_dir() / NOTEBOOKS[stage], as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c for c in code if "parameters" in c.metadata.get("tags", [])] == code[:1]
    assert all(not c.outputs and c.execution_count is None for c in code)
    params = notebook_parameters(stage)  # papermill parses every line (no '=' in comments)
    assert {"recipe", "run_dir"} <= set(params)
    assert len(params) == len([ln for ln in code[0].source.splitlines() if ln.strip()])
