"""The Colab/Kaggle notebook executes top to bottom (tiny config on CPU), so it cannot rot."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def test_notebook_runs_with_the_tiny_config(tmp_path):
    notebook = nbformat.read(ROOT / "notebooks" / "longrope_tpu.ipynb", as_version=4)
    notebook.cells[1].source = (f'INSTALL = False\nCONFIG = "configs/tiny.py"\nWORKDIR = "{tmp_path / "run"}"\n'
                                f'REPO = "{ROOT}"')
    NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for o in cell.get("outputs", []))
    assert "longrope" in outputs and "It is a truth" in outputs
    images = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 2
