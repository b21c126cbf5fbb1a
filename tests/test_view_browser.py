"""graph.show() in headless Chromium, offline, as the notebook shows it (the iframe output) and as a
saved page: it renders every node, a hover shows the node's card, a click highlights exactly the
node's inputs and outputs, the slider hides what it should, and no script fails.

Needs Chromium and playwright-core (`scripts/setup-browser-test.sh`); skips with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def browser() -> dict:
    chromium = os.environ.get("TL_CLT_CHROMIUM", "/usr/bin/chromium")
    modules = Path(os.environ.get("TL_CLT_BROWSER_DIR", ROOT / ".browser-test")) / "node_modules"
    if not Path(chromium).is_file():
        pytest.skip(f"no Chromium at {chromium} (run scripts/setup-browser-test.sh)")
    if shutil.which("node") is None or not (modules / "playwright-core/package.json").is_file():
        pytest.skip("node or playwright-core missing (run scripts/setup-browser-test.sh)")
    return {"chromium": chromium, "nodeModules": str(modules)}


def _drive(browser: dict, url: str, tmp_path: Path, in_frame: bool) -> dict:
    config = dict(browser, url=url, timeoutMs=60000, inFrame=in_frame)  # screenshot=PATH to look at it
    (tmp_path / "config.json").write_text(json.dumps(config))
    run = subprocess.run(
        ["node", str(ROOT / "tests/browser/view_graph.mjs"), str(tmp_path / "config.json")],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


@pytest.mark.parametrize("as_shown", ["notebook output", "saved page"])
def test_the_view_works_in_a_browser(browser, toy, tmp_path, as_shown):
    graph = toy.graph.prune(0.8, 0.98)
    v = graph.show(model=toy.model, clt=toy.clt)
    data = v.data  # what the page draws
    if as_shown == "notebook output":  # Jupyter puts the output into a UTF-8 page
        head = '<!DOCTYPE html><html><head><meta charset="utf-8"></head>'
        page = f"{head}<body>{v._repr_html_()}</body></html>"
        (tmp_path / "notebook.html").write_text(page, encoding="utf-8")
        report = _drive(browser, (tmp_path / "notebook.html").as_uri(), tmp_path, in_frame=True)
    else:
        report = _drive(browser, v.save(tmp_path / "view.html").as_uri(), tmp_path, in_frame=False)
    print(json.dumps({k: v for k, v in report.items() if k != "target"}, indent=1)[:4000])
    assert "error" not in report, report["error"]
    assert report["pageErrors"] == [] and report["consoleErrors"] == []
    assert report["aborted"] == []  # offline: nothing asked of the network

    n_nodes = graph.to_networkx().number_of_nodes()
    assert report["initial"]["points"] == report["initial"]["visibleNodes"] == n_nodes == v.n_nodes
    assert report["initial"]["visibleEdges"] == v.n_edges

    node_id, index = report["target"]["id"], report["target"]["index"]
    assert node_id in report["hover"] and "activation" in report["hover"] and "top tokens" in report["hover"]
    assert node_id.startswith("F:") and "dashboard:" in report["hover"]  # the toy world ships dashboards

    clicked = report["clicked"]
    assert clicked["selected"] == node_id and node_id in clicked["panel"]
    assert "dashboard:" in clicked["panel"] and "Top outputs" in clicked["panel"]  # the full card
    assert clicked["inputs"] == sum(e["t"] == index for e in data["edges"])
    assert clicked["outputs"] == sum(e["s"] == index for e in data["edges"])
    assert report["unclicked"]["selected"] == "" and report["unclicked"]["inputs"] == 0

    first = data["steps"][0]
    assert report["threshold"] == pytest.approx(first)
    want = sum(n["always"] or n["cum"] <= first + 1e-9 for n in data["nodes"])
    assert report["sliderFirst"]["visibleNodes"] == report["sliderFirst"]["points"] == want < n_nodes
