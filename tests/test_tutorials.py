"""The tutorials run on the toy world, and tell the story: each ablation moves the prediction the way
the seed predicts. Expected directions come from the seed (not from a previous run of the notebook)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
PRESIDENTS_60S_80S = {" Lyndon", " Richard", " Gerald", " Jimmy", " Ronald"}
FILLER = {" a", " the", " not", " very", " quite", " much", " The", " was", " in"}


def run_notebook(name: str, tmp_path: Path) -> dict:
    nb = nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            for line in out.get("text", "").splitlines():
                if line.startswith("TUTORIAL_RESULTS "):
                    return json.loads(line.removeprefix("TUTORIAL_RESULTS "))
    raise AssertionError(f"{name} printed no TUTORIAL_RESULTS line")


def test_notebooks_are_built_from_their_cells():
    from build_notebooks import load_cells, make_notebook

    for cells_file in TUTORIALS.glob("cells_*.py"):
        name = cells_file.stem.removeprefix("cells_")
        built = make_notebook(load_cells(cells_file))
        shipped = nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4)
        assert [c.source for c in shipped.cells] == [c.source for c in built.cells], (
            f"{name}.ipynb is stale: run python tutorials/build_notebooks.py --execute"
        )


@pytest.fixture(scope="module")
def president(tmp_path_factory):
    return run_notebook("01_president_circuit", tmp_path_factory.mktemp("t01"))


def test_president_circuit_has_four_groups(president):
    assert president["baseline"]["top"] == " Barack" and president["baseline"]["p_barack"] > 0.5
    assert set(president["groups"]) == {"President", "Year ~2010", "Say a political figure", "Events ~2010"}
    assert all(n > 0 for n in president["groups"].values())


def test_ablating_the_year_gives_presidents_of_other_decades(president):
    base, ablated, steered = (
        president["baseline"],
        president["Year ~2010"]["ablate"],
        president["Year ~2010"]["x-1"],
    )
    assert ablated["top"] in PRESIDENTS_60S_80S and ablated["p_barack"] < 0.1 * base["p_barack"]
    assert ablated["p_presidents_60s_80s"] > 0.5
    assert steered["top"] in PRESIDENTS_60S_80S  # steering the era down: 70s/80s presidents


@pytest.mark.parametrize("group", ["President", "Say a political figure"])
def test_removing_office_groups_gives_filler(president, group):
    base, ablated, steered = president["baseline"], president[group]["ablate"], president[group]["x-1"]
    assert ablated["p_filler"] > 5 * base["p_filler"] and ablated["p_presidents"] < base["p_presidents"]
    assert steered["top"] in FILLER and steered["p_filler"] > 0.3


def test_steering_events_down_moves_away_from_barack(president):
    base, steered = president["baseline"], president["Events ~2010"]["x-1"]
    assert steered["p_barack"] < base["p_barack"] - 0.05
    assert steered["p_presidents"] > 0.5  # still a president, of another era


def test_with_your_own_hooks(tmp_path):
    r = run_notebook("02_with_your_own_hooks", tmp_path)
    assert r["error_term_max_diff"] < 1e-4
    assert r["hooks_left"] == 0 and r["same_logits"]
    assert r["year_positions"] and r["feature_patch_moved"] > 0.5
    assert r["feature_patch_prediction"] in PRESIDENTS_60S_80S  # patched year features: an 80s-era answer
