"""Our exported graph opens in circuit-tracer's own frontend (headless Chromium, offline).

Needs what `scripts/setup-browser-test.sh` installs (Chromium, node packages, the circuit-tracer
wheel's frontend files); skips with the reason when something is missing. Paths can be overridden
with TL_CLT_CHROMIUM, TL_CLT_BROWSER_DIR (holding node_modules/) and TL_CLT_FRONTEND (the
frontend's assets folder).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from urllib.parse import quote, unquote

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
    """Frontend files from `directory`; /data/ and /graph_data/ from the graph folder (sub-folders
    included, as circuit-tracer's local server does); /hf/ from `server.hf_dir` (a stand-in for a hub
    repo's features/). Answers HTTP Range requests (206), which the frontend sends for feature records
    and python's http.server does not."""

    def __init__(self, *args, data_dir: Path, **kwargs):
        self.data_dir = data_dir
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        clean = unquote(path.split("?", 1)[0].split("#", 1)[0])
        roots = {
            "/data/": self.data_dir,
            "/graph_data/": self.data_dir,
            "/hf/": getattr(self.server, "hf_dir", None),
        }
        for prefix, root in roots.items():
            if clean.startswith(prefix) and root is not None:
                target = (root / clean[len(prefix) :]).resolve()
                return str(target) if target.is_relative_to(root.resolve()) else str(root / "absent")
        return super().translate_path(path)

    def send_head(self):
        header = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not header or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", header.strip())
        start = int(match[1]) if match else size
        end = min(int(match[2]) if match and match[2] else size - 1, size - 1)
        self.server.ranges.append((self.path, header))
        if start >= size or end < start:
            self.send_error(416)
            return None
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def _serving(assets: Path, data_dir: Path, hf_dir: Path | None = None):
    """Serve on 127.0.0.1: the frontend sends ./data/ to a remote CDN when the host is localhost."""
    handler = functools.partial(_Handler, directory=str(assets), data_dir=data_dir)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.hf_dir, httpd.ranges = hf_dir, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def server(tools, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("graph_data")
    with _serving(tools["assets"], data_dir) as (url, _):
        yield url, data_dir


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


# ------------------------------------------------------------------------ feature dashboards
TOY_STORY = "Fact: The president of the United States in 2010 was"
PANEL = ".feature-detail .feature-examples-container"


def _feature_spec(url: str, record: dict, root: str, **extra) -> dict:
    """What to wait for and measure on a page that shows one feature's examples."""
    return {
        "url": url,
        "waitFor": f"{root} .feature-example-list .ctx-container",
        "counts": {"examples": f"{root} .feature-example-list .ctx-container"},
        "texts": {
            "quantiles": f"{root} .quantile-title",
            "logits": f"{root} .feature-example-logits .ctx-container .token",
            "title": ".feature-detail .feature-title",
        },
        **extra,
    }


def _check_feature_page(report: dict, record: dict) -> None:
    _clean(report)
    groups = record["examples_quantiles"]
    assert report["counts"]["examples"] == sum(len(g["examples"]) for g in groups)
    assert [t.strip() for t in report["texts"]["quantiles"]] == [g["quantile_name"] for g in groups]
    assert report["texts"]["logits"] == (record["top_logits"] + record["bottom_logits"])[:20]


@pytest.fixture(scope="module")
def toy_story():
    from tl_clt.toyworld import load_toyworld

    model, clt = load_toyworld()
    graph = tl_clt.attribute(model, clt, TOY_STORY, verbose=False).prune(0.8, 0.98)
    return clt, graph


def test_toy_world_dashboards_render_in_the_frontend(tools, toy_story, tmp_path):
    """The graph page's feature panel shows a clicked feature's examples, read (a) from the
    per-feature JSON files `write_graph_folder(dashboards=...)` lays out (offline, any circuit-tracer
    frontend), (b) from the binary index + layer files with HTTP Range requests, as from a hub repo;
    and circuit-tracer's feature-view.html shows the same record."""
    clt, graph = toy_story
    data_dir = tmp_path / "data"
    tl_clt.write_graph_folder({"toy-story": graph}, data_dir, dashboards=True)
    tl_clt.write_graph_folder({"toy-story-hub": graph}, data_dir, scan="tl-clt/toyworld-clt")
    data = json.loads((data_dir / "toy-story.json").read_text())
    node = max(
        (n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"),
        key=lambda n: n["activation"],
    )
    layer, feature = int(node["layer"]), int(node["node_id"].split("_")[1])
    record = clt.dashboards.record(layer, feature)
    name = data["metadata"]["scan"].removeprefix("./data/features/")
    hub = "https://huggingface.co/tl-clt/toyworld-clt/resolve/main/features/"
    cdn = "https://d1fk9w8oratjix.cloudfront.net/features/"
    with _serving(tools["assets"], data_dir, hf_dir=clt.path / "features") as (url, httpd):
        pages = [
            _feature_spec(f"{url}/index.html?slug=toy-story&clickedId={node['node_id']}", record, PANEL),
            _feature_spec(
                f"{url}/index.html?slug=toy-story-hub&clickedId={node['node_id']}",
                record,
                PANEL,
                routes=[[hub, f"{url}/hf/"]],
            ),
            _feature_spec(
                f"{url}/feature-view.html?model={name}&featureId={node['feature']}",
                record,
                ".features-container",
                routes=[[cdn, f"{url}/data/features/"]],
            ),
        ]
        local, from_hub, view = _render(tools, pages, tmp_path)
        ranges = list(httpd.ranges)
    print(json.dumps([{k: v for k, v in r.items() if k != "aborted"} for r in (local, from_hub, view)]))
    for report in (local, from_hub, view):
        _check_feature_page(report, record)
    for report in (local, from_hub):
        assert report["linkGraphNodes"] == len(data["nodes"])
        # the histogram read quantile_values and activation_frequency: "Act: a.aa NNpct, Freq: f%"
        title = " ".join(report["texts"]["title"])
        assert f"Freq: {100 * record['activation_frequency']:.3f}%" in title and "pct" in title
    assert local["routed"] == [] and view["routed"]  # (a) read nothing from outside
    assert ranges and all(path.startswith("/hf/layer_") for path, _ in ranges)  # ranges only for (b)
    # from the "hub": the index, then this feature's record by a Range request of exactly its bytes
    offsets = clt.dashboards.index[layer][1]
    bins = [r for r in from_hub["routed"] if r["url"].endswith(".bin")]
    assert bins and all(r["status"] == 206 for r in bins)
    assert {r["range"] for r in bins} == {f"bytes={offsets[feature]}-{offsets[feature + 1]}"}
    assert any(r["url"].endswith("index.json.gz") and r["method"] == "HEAD" for r in from_hub["routed"])
    assert view["routed"] and all(r["url"].endswith(f"/{node['feature']}.json") for r in view["routed"])
