"""`examples/quickstart.ipynb` runs top to bottom in a fresh kernel and shows what its text promises."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs the [test] extra")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs the [test] extra")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.extend(str(value) for value in output.get("data", {}).values())
    return "".join(parts)


def test_quickstart_notebook_runs(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Runs in tmp_path, where the notebook saves its store file.
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert not any(output.get("output_type") == "error" for cell in code for output in cell.get("outputs", []))
    first, second = _text(code[1]).splitlines()
    assert first.split()[1] == "0" and int(second.split()[1]) > 0  # the second request hits the system prompt
    assert "same tokens: True" in _text(code[2])
    assert "<table>" in _text(code[3])  # the store's HTML repr
    plot = code[4]
    assert any("image/png" in output.get("data", {}) for output in plot.outputs) and "x faster" in _text(plot)
    assert "after reload:" in _text(code[5]) and int(_text(code[5]).split("after reload: ")[1].split()[0]) > 0
    assert (tmp_path / "quickstart-store.safetensors").exists()
