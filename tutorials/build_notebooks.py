"""Write the tutorial notebooks from the cell lists in `tutorials/cells_*.py`, optionally executed.

    python tutorials/build_notebooks.py            # write the .ipynb files (no outputs)
    python tutorials/build_notebooks.py --execute  # ... and run them, keeping the outputs

Each `cells_<name>.py` holds `CELLS`: a list of ("md" | "code", source) pairs. Keeping the source in
Python files keeps diffs readable; the notebooks are what users open and what the tests execute.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent


def load_cells(path: Path) -> list[tuple[str, str]]:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CELLS


def make_notebook(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for kind, source in cells:
        source = source.strip("\n")
        nb.cells.append(
            nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        )
    return nb


def execute(nb: nbformat.NotebookNode, cwd: Path, timeout: int = 900) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return nb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--execute", action="store_true", help="run each notebook and keep its outputs")
    args = ap.parse_args()
    for cells_file in sorted(HERE.glob("cells_*.py")):
        name = cells_file.stem.removeprefix("cells_")
        nb = make_notebook(load_cells(cells_file))
        if args.execute:
            nb = execute(nb, HERE)
        out = HERE / f"{name}.ipynb"
        nbformat.write(nb, out)
        print(out)


if __name__ == "__main__":
    main()
