"""Our exported graph opens in circuit-tracer's own frontend (headless Chromium, offline).

Needs what `scripts/setup-browser-test.sh` installs (Chromium, node packages, the circuit-tracer
wheel's frontend files); skips with the reason when something is missing. Paths can be overridden
with TL_CLT_CHROMIUM, TL_CLT_BROWSER_DIR (holding node_modules/) and TL_CLT_FRONTEND (the
frontend's assets folder).
"""

from __future__ import annotations

import functools
import glob
import http.server
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import PROMPT

import tl_clt
from tl_clt import export

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parent.parent
SETUP = "run scripts/setup-browser-test.sh"
NODE_PACKAGES = ("playwright-core", "d3-jetpack", "dagre", "pako")


def _browser_dir() -> Path:
    return Path(os.environ.get("TL_CLT_BROWSER_DIR", ROOT / ".browser-test"))


def _frontend_assets() -> Path | None:
    """The frontend folder of the circuit-tracer wheel: unpacked by the setup script, or found in
    a circuit-tracer virtualenv."""
    candidates = [
        os.environ.get("TL_CLT_FRONTEND"),
        _browser_dir() / "circuit-tracer/circuit_tracer/frontend/assets",
    ]
    for venv in (ROOT / ".ctvenv", ROOT / "ctvenv"):
        pattern = venv / "lib/python3*/site-packages/circuit_tracer/frontend/assets"
        candidates += glob.glob(str(pattern))
    for c in candidates:
        if c and (Path(c) / "index.html").is_file():
            return Path(c)
    return None


@pytest.fixture(scope="module")
def tools() -> dict:
    chromium = os.environ.get("TL_CLT_CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).is_file():
        pytest.skip(f"no Chromium at {chromium} ({SETUP}, or set TL_CLT_CHROMIUM)")
    node = shutil.which("node")
    if node is None:
        pytest.skip(f"node is not installed ({SETUP})")
    modules = _browser_dir() / "node_modules"
    missing = [p for p in NODE_PACKAGES if not (modules / p / "package.json").is_file()]
    if missing:
        pytest.skip(f"node packages {missing} missing in {modules} ({SETUP})")
    assets = _frontend_assets()
    if assets is None:
        pytest.skip(f"circuit-tracer frontend files not found ({SETUP})")
    return {"chromium": chromium, "node": node, "modules": modules, "assets": assets}


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Frontend files from `directory`; /data/ and /graph_data/ from the graph folder."""

    def __init__(self, *args, data_dir: Path, **kwargs):
        self.data_dir = data_dir
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0].split("#", 1)[0]
        for prefix in ("/data/", "/graph_data/"):
            if clean.startswith(prefix):
                return str(self.data_dir / Path(clean[len(prefix) :]).name)
        return super().translate_path(path)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server(tools, tmp_path_factory):
    """Serve on 127.0.0.1: the frontend sends ./data/ to a remote CDN when the host is localhost."""
    data_dir = tmp_path_factory.mktemp("graph_data")
    handler = functools.partial(_Handler, directory=str(tools["assets"]), data_dir=data_dir)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", data_dir
    httpd.shutdown()
    httpd.server_close()


def _render(tools, urls: list[str], tmp_path: Path) -> list[dict]:
    """What the frontend showed at each url (see tests/browser/render_graph.mjs)."""
    config = {
        "urls": urls,
        "chromium": tools["chromium"],
        "nodeModules": str(tools["modules"]),
        "timeoutMs": 30000,
        "screenshotPrefix": str(tmp_path / "page"),
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    run = subprocess.run(
        [tools["node"], str(ROOT / "tests/browser/render_graph.mjs"), str(tmp_path / "config.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def _clean(report: dict) -> None:
    assert report["pageErrors"] == []
    assert report["consoleErrors"] == []
    assert report["failedLocal"] == []
    assert "waitError" not in report, report.get("waitError")


def test_exported_graph_renders_in_the_frontend(tools, server, model_dir, clt, tmp_path):
    url, data_dir = server
    model = tl_clt.load_qwen3(model_dir)
    graph = tl_clt.attribute(model, clt, PROMPT, max_n_logits=4, batch_size=64, verbose=False)
    pruned = graph.prune(0.8, 0.98)
    G = pruned.to_networkx()
    feats = [n for n, d in G.nodes(data=True) if d["kind"] == "feature" and G.degree(n)][:3]
    tl_clt.write_graph_folder({"tiny": pruned}, data_dir, supernodes={"group": feats[:2]})
    data = json.loads((data_dir / "tiny.json").read_text())
    export.validate_graph_json(data)
    groups = quote(json.dumps(data["qParams"]["supernodes"]))

    plain, grouped = _render(
        tools, [f"{url}/index.html?slug=tiny", f"{url}/index.html?slug=tiny&supernodes={groups}"], tmp_path
    )
    print(json.dumps([{k: v for k, v in r.items() if k != "aborted"} for r in (plain, grouped)]))

    for report in (plain, grouped):
        _clean(report)
        assert report["linkGraphNodes"] == len(data["nodes"])
        assert report["graphOptions"] == ["tiny"]
        assert report["title"] == f"Attribution Graph: {data['metadata']['prompt']}"
        assert report["yTicks"][0] == "Emb" and report["yTicks"][-1] == "Lgt"
    # the file's pinnedIds (the group's members) fill the subgraph panel; the local frontend
    # takes supernodes from the URL (an empty URL list replaces the file's), so give it ours there
    assert plain["subgraphNodes"] == 2
    assert grouped["subgraphNodes"] == 1 and grouped["subgraphLabels"] == ["group"]
