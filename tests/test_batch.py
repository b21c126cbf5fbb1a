"""attribute_many / tl-clt batch: graphs equal to `attribute` one by one (locally and on 2 Ray workers),
resume, a killed Ray worker, a bad prompt, Ctrl-C, the cross-prompt tables (checked against networkx and
DuckDB), prompt sources, and clear errors (Ray missing, a loaded model sent to Ray).

The Ray tests share one local Ray (2 CPUs, no dashboard) per module; its teardown checks with psutil that
no Ray process is left.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import sys

import pytest
import torch
from conftest import PROMPT
from graph_factory import assert_same_graph
from ray_helpers import local_ray, wait_gone

import tl_clt
from tl_clt import AttributionGraph
from tl_clt.batch import manifest, read_prompts
from tl_clt.batch.attribute_job import AttributeOptions
from tl_clt.batch.layout import RunDir, write_atomic
from tl_clt.batch.sources import file_stem
from tl_clt.cli import main

PROMPTS = [
    PROMPT,
    "The capital of France is",
    "In 1776 the declaration was",
    "The quick brown fox jumps over",
    "Numbers 0 1 2 3 4 and words like",
]
OPTS = dict(max_n_logits=3, batch_size=16)


# ------------------------------------------------------------------------ fixtures and helpers
@pytest.fixture(scope="module")
def loaded(model_dir, small_clt_dir):
    model = tl_clt.load_qwen3(model_dir, backend=None)
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(small_clt_dir, dtype=torch.float32)
    return model, clt


@pytest.fixture(scope="module")
def reference(loaded):
    """`tl_clt.attribute` called one prompt at a time, in this process (computed on first use)."""
    model, clt = loaded
    cache: dict[str, AttributionGraph] = {}

    def get(prompt: str) -> AttributionGraph:
        if prompt not in cache:
            cache[prompt] = tl_clt.attribute(model, clt, prompt, **OPTS, verbose=False)
        return cache[prompt]

    return get


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def check_run(folder, prompts_by_id: dict, reference) -> tl_clt.BatchTables:
    """Every prompt done once, its graph equal to `attribute`'s, nothing else in the folders."""
    tables = tl_clt.load_batch(folder)
    run = RunDir(folder)
    lines = [json.loads(x) for x in run.manifest.read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == sorted(prompts_by_id)  # one line per prompt: none done twice
    stems = {file_stem(i) for i, p in prompts_by_id.items() if p}
    assert {p.name for p in run.graphs.iterdir()} == {f"{s}.{e}" for s in stems for e in ("pt", "json")}
    assert {p.name for p in run.features.iterdir()} == {f"{s}.parquet" for s in stems}
    for pid, prompt in prompts_by_id.items():
        if prompt:
            got = AttributionGraph.load(run.graph_path(file_stem(pid)))
            assert_same_graph(got, reference(prompt), skip=("meta",))  # timings differ
    return tables


def test_defaults_are_attribute_and_prune_defaults():
    """The batch options cannot drift from tl_clt.attribute / AttributionGraph.prune."""
    ours = vars(AttributeOptions())
    theirs = {
        **{k: p.default for k, p in inspect.signature(tl_clt.attribute).parameters.items()},
        **{k: p.default for k, p in inspect.signature(AttributionGraph.prune).parameters.items()},
    }
    many = inspect.signature(tl_clt.attribute_many).parameters
    for name, value in ours.items():
        assert theirs[name] == value == many[name].default, name


# ------------------------------------------------------------------------ prompt sources and ids
def test_prompt_sources(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\n  \nsecond prompt \r\nthird\n")
    assert [(i.id, i.prompt) for i in read_prompts(txt)] == [
        ("000000", "first prompt"),
        ("000003", "second prompt "),  # blank lines skipped but counted: ids stay put
        ("000004", "third"),
    ]
    rows = [{"id": "a", "prompt": "x", "year": 2010}, {"prompt": "y"}, {"id": 7, "prompt": [1, 2]}]
    items = read_prompts(write_jsonl(tmp_path / "p.jsonl", rows))
    assert [(i.id, i.prompt, i.extra) for i in items] == [
        ("a", "x", {"year": 2010}),
        ("000001", "y", {}),
        ("7", [1, 2], {}),
    ]
    assert [i.id for i in read_prompts(["u", "v"])] == ["000000", "000001"]
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict({"text": ["p", "q"], "id": ["x1", "x2"], "year": [1, 2]})
    items = read_prompts(data, column="text")
    assert [(i.id, i.prompt, i.extra) for i in items] == [("x1", "p", {"year": 1}), ("x2", "q", {"year": 2})]
    data.save_to_disk(str(tmp_path / "ds"))
    assert read_prompts(tmp_path / "ds", column="text") == items


@pytest.mark.parametrize("pid", ["../../etc/passwd", "/abs/path", ".hidden", "a/b", "x" * 300, "..", "ü"])
def test_ids_cannot_leave_the_folder(pid, tmp_path):
    stem = file_stem(pid)
    assert (tmp_path / f"{stem}.pt").resolve().parent == tmp_path.resolve()
    assert not stem.startswith(".") and "/" not in stem and len(stem) <= 80
    assert file_stem(pid + "!") != stem  # the hash keeps ids apart


def test_duplicate_and_colliding_ids(tmp_path):
    with pytest.raises(ValueError, match="duplicate prompt id"):
        read_prompts([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])
    with pytest.raises(ValueError, match="share a file name"):
        read_prompts([{"id": "Ab", "prompt": "x"}, {"id": "aB", "prompt": "y"}])


def test_write_atomic_leaves_nothing_when_it_fails(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def half(f):
        f.write(b"half a fi")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_atomic(path, half)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


# ------------------------------------------------------------------------ local engine
def test_local_matches_attribute_and_records_a_bad_prompt(loaded, reference, tmp_path):
    model, clt = loaded
    rows = [{"id": f"p{i}", "prompt": p, "year": 2000 + i} for i, p in enumerate(PROMPTS[:3])]
    rows.insert(1, {"id": "empty", "prompt": "", "year": 0})
    out = tmp_path / "run"
    tables = tl_clt.attribute_many(
        model, clt, write_jsonl(tmp_path / "p.jsonl", rows), out, **OPTS, verbose=False
    )
    prompts_by_id = {r["id"]: r["prompt"] for r in rows}
    assert check_run(out, prompts_by_id, reference).manifest.equals(tables.manifest)
    m = tables.manifest.set_index("id")
    assert set(tables.manifest.columns) == manifest.FIELDS | {"year"}  # what sources refuse as extra fields
    assert m.loc["empty", "status"] == "failed" and "The prompt is empty" in m.loc["empty", "error"]
    for row in rows:
        if not row["prompt"]:
            continue
        ref, rec = reference(row["prompt"]), m.loc[row["id"]]
        assert rec["status"] == "done" and rec["year"] == row["year"]
        assert rec["top_token_id"] == int(ref.logit_tokens[0])
        assert rec["top_probability"] == pytest.approx(float(ref.logit_probabilities[0]))
        assert (rec["replacement_score"], rec["completeness_score"]) == pytest.approx(tuple(ref.scores()))
        data = json.loads((out / rec["json"]).read_text())
        assert data["metadata"]["batch"] == {"id": row["id"], "year": row["year"]}
        expected = tl_clt.graph_to_dict(ref, file_stem(row["id"]), prompt=row["prompt"])
        assert (data["nodes"], data["links"]) == (expected["nodes"], expected["links"])
        check_feature_rows(tables.features[tables.features["id"] == row["id"]], ref)


def test_a_worker_gives_its_graphs_one_workspace(loaded, tmp_path, monkeypatch):
    """The prompts of a worker share one tl_clt.Workspace (no fresh work memory per prompt); the graphs
    stay `attribute`'s (the test above)."""
    from tl_clt import attribution

    seen = []
    attribute = attribution.attribute

    def spy(*args, workspace=None, **kwargs):
        seen.append(workspace)
        return attribute(*args, workspace=workspace, **kwargs)

    monkeypatch.setattr(attribution, "attribute", spy)
    model, clt = loaded
    rows = [{"id": f"p{i}", "prompt": p} for i, p in enumerate(PROMPTS[:3])]
    tl_clt.attribute_many(model, clt, write_jsonl(tmp_path / "p.jsonl", rows), tmp_path / "run", **OPTS)
    assert len(seen) == 3 and isinstance(seen[0], tl_clt.Workspace)
    assert all(ws is seen[0] for ws in seen) and len(seen[0]) > 0


def check_feature_rows(rows, graph: AttributionGraph) -> None:
    """The feature table's rows of one prompt, against the pruned graph read through networkx."""
    G, P = graph.to_networkx(), graph.prune().to_networkx()
    top = f"L:{int(graph.logit_tokens[0])}"
    expected = {
        n: (
            d["layer"],
            d["pos"],
            d["feature"],
            d["activation"],
            d["influence"],
            G.edges[n, top]["weight"] if G.has_edge(n, top) else 0.0,
        )
        for n, d in P.nodes(data=True)
        if d["kind"] == "feature"
    }
    got = {
        r.node: (r.layer, r.pos, r.feature, r.activation, r.influence, r.logit_edge)
        for r in rows.itertuples()
    }
    assert got.keys() == expected.keys() and len(rows) == len(expected)
    for node, values in expected.items():
        assert got[node][:3] == values[:3]
        assert got[node][3:] == pytest.approx(values[3:], rel=1e-6, abs=1e-7)
    for r in rows.itertuples():
        assert r.token_id == int(graph.tokens[r.pos]) and r.token == graph.token_strs[r.pos]
        assert r.pos_from_end == r.pos - graph.n_pos


def test_resume_skips_finished_and_checks_options(loaded, tmp_path):
    model, clt = loaded
    out = tmp_path / "run"
    first_prompts = PROMPTS[:2] + [""]
    tl_clt.attribute_many(model, clt, first_prompts, out, **OPTS, verbose=False)
    first = {p.name: p.stat().st_mtime_ns for p in (out / "graphs").iterdir()}
    seen = []
    more = first_prompts + PROMPTS[2:4]
    tables = tl_clt.attribute_many(model, clt, more, out, **OPTS, verbose=False, on_record=seen.append)
    assert [r["id"] for r in seen] == ["000003", "000004"]  # only the new ones; the failed one is not retried
    assert all((out / "graphs" / n).stat().st_mtime_ns == t for n, t in first.items())
    assert tables.manifest["status"].tolist() == ["done", "done", "failed", "done", "done"]
    seen.clear()
    tl_clt.attribute_many(
        model, clt, more, out, **OPTS, verbose=False, on_record=seen.append, retry_failed=True
    )
    assert [(r["id"], r["status"]) for r in seen] == [("000002", "failed")]
    assert len(tl_clt.load_batch(out).manifest) == 5  # the latest record per id
    with pytest.raises(ValueError, match=r"was made with other options \(max_n_logits: 3 -> 4\)"):
        tl_clt.attribute_many(model, clt, more, out, **{**OPTS, "max_n_logits": 4}, verbose=False)
    with pytest.raises(ValueError, match="Prompt id '000001' was 'The capital of France is' in the earlier"):
        tl_clt.attribute_many(model, clt, PROMPTS[:1] + PROMPTS[2:], out, **OPTS, verbose=False)


def test_ctrl_c_keeps_finished_work(loaded, reference, tmp_path):
    model, clt = loaded
    out = tmp_path / "run"

    def interrupt_after_two(record):
        if record["id"] == "000001":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tl_clt.attribute_many(model, clt, PROMPTS, out, **OPTS, verbose=False, on_record=interrupt_after_two)
    tables = tl_clt.load_batch(out)
    assert tables.manifest["id"].tolist() == ["000000", "000001"]
    assert set(tables.features["id"]) <= {"000000", "000001"}
    import pandas as pd

    assert pd.read_parquet(out / "features.parquet").equals(tables.features)  # written on the way out
    seen = []
    tl_clt.attribute_many(model, clt, PROMPTS, out, **OPTS, verbose=False, on_record=seen.append)
    assert [r["id"] for r in seen] == ["000002", "000003", "000004"]
    check_run(out, {f"{i:06d}": p for i, p in enumerate(PROMPTS)}, reference)


def test_torn_manifest_line_is_dropped_and_repaired(loaded, tmp_path):
    model, clt = loaded
    out = tmp_path / "run"
    tl_clt.attribute_many(model, clt, PROMPTS[:1], out, **OPTS, verbose=False)
    with open(out / "manifest.jsonl", "a") as f:
        f.write('{"id": "000001", "prompt": "The capi')  # the driver died mid-append
    assert tl_clt.load_batch(out).manifest["id"].tolist() == ["000000"]
    tables = tl_clt.attribute_many(model, clt, PROMPTS[:2], out, **OPTS, verbose=False)
    assert tables.manifest["id"].tolist() == ["000000", "000001"]
    assert all(json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines())


def test_tables_in_duckdb_and_recurring_features(loaded, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    model, clt = loaded
    out = tmp_path / "run"
    tables = tl_clt.attribute_many(model, clt, PROMPTS, out, **OPTS, node_threshold=0.95, verbose=False)
    features = tables.features  # noqa: F841 - DuckDB reads the DataFrame by its variable name
    query = """
        WITH per_prompt AS (
            SELECT id, layer, feature, SUM(influence) AS infl FROM {} GROUP BY id, layer, feature)
        SELECT layer, feature, COUNT(*) AS n, AVG(infl) AS mean_infl
        FROM per_prompt GROUP BY layer, feature ORDER BY n DESC, mean_infl DESC, layer, feature
    """
    from_frame = duckdb.sql(query.format("features")).fetchall()
    from_file = duckdb.sql(query.format(f"'{out / 'features.parquet'}'")).fetchall()
    assert from_frame == from_file and len(from_frame) > 3
    rec = tl_clt.recurring_features(tables)
    assert max(rec["n_prompts"]) > 1  # some feature recurs across these prompts
    by_key = {(r.layer, r.feature): (r.n_prompts, r.mean_influence) for r in rec.itertuples()}
    assert len(by_key) == len(from_frame)
    for layer, feature, n, mean_infl in from_frame:
        assert by_key[layer, feature][0] == n
        assert by_key[layer, feature][1] == pytest.approx(mean_infl, rel=1e-6)
    assert rec["n_prompts"].is_monotonic_decreasing
    assert (rec["share_of_prompts"] == rec["n_prompts"] / len(PROMPTS)).all()
    joined = duckdb.sql(
        f"SELECT m.top_token, COUNT(*) FROM '{out / 'manifest.parquet'}' m "
        "JOIN features f USING (id) GROUP BY 1"
    ).fetchall()
    assert sum(n for _, n in joined) == len(tables.features)


# ------------------------------------------------------------------------ command line and clear errors
def test_cli_batch_runs_and_resumes(model_dir, small_clt_dir, reference, tmp_path, capsys):
    txt = tmp_path / "p.txt"
    txt.write_text("\n".join(PROMPTS[:2]) + "\n")
    out = tmp_path / "run"
    args = ["batch", str(txt), "-o", str(out), "--model", str(model_dir), "--clt", str(small_clt_dir)]
    args += ["--max-n-logits", "3", "--batch-size", "16", "-q"]
    assert main(args) == 0
    assert capsys.readouterr().out.split() == [str(out / "manifest.parquet"), str(out / "features.parquet")]
    check_run(out, {"000000": PROMPTS[0], "000001": PROMPTS[1]}, reference)
    lines = (out / "manifest.jsonl").read_text()
    assert main(args) == 0 and (out / "manifest.jsonl").read_text() == lines  # nothing redone


def test_cli_passes_engine_options(model_dir, small_clt_dir, tmp_path, monkeypatch):
    got = {}

    def fake(*args, **kwargs):
        got.update(kwargs, args=args)
        raise KeyboardInterrupt

    monkeypatch.setattr(tl_clt, "attribute_many", fake)
    monkeypatch.setitem(sys.modules, "ray", type(sys)("ray"))  # the CLI only checks that it imports
    (tmp_path / "p.txt").write_text("a\n")
    argv = ["batch", str(tmp_path / "p.txt"), "-o", str(tmp_path / "o"), "--model", str(model_dir)]
    argv += ["--clt", str(small_clt_dir), "--engine", "ray", "--address", "auto", "--workers", "3"]
    argv += [
        "--gpus-per-worker",
        "1",
        "--max-feature-nodes",
        "20",
        "--node-threshold",
        "0.5",
        "--no-pt",
        "-q",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 130  # Ctrl-C
    assert got["args"] == (str(model_dir), str(small_clt_dir), str(tmp_path / "p.txt"), tmp_path / "o")
    expected = dict(engine="ray", address="auto", workers=3, gpus_per_worker=1.0, max_feature_nodes=20)
    assert {k: got[k] for k in expected} == expected
    assert (got["node_threshold"], got["save_graphs"], got["dtype"]) == (0.5, False, "float32")


def test_cli_local_engine_takes_no_workers(model_dir, small_clt_dir, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a\n")
    argv = ["batch", str(tmp_path / "p.txt"), "-o", str(tmp_path / "o"), "--model", str(model_dir)]
    with pytest.raises(SystemExit):
        main(argv + ["--clt", str(small_clt_dir), "--workers", "2"])
    assert "need --engine ray" in capsys.readouterr().err


def test_ray_missing_names_the_extra(loaded, model_dir, small_clt_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "tl-clt\[ray\]"'):
        tl_clt.attribute_many(model_dir, small_clt_dir, ["a"], tmp_path / "o", engine="ray")
    (tmp_path / "p.txt").write_text("a\n")
    argv = ["batch", str(tmp_path / "p.txt"), "-o", str(tmp_path / "o"), "--model", str(model_dir)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--clt", str(small_clt_dir), "--engine", "ray"])
    assert exit_info.value.code == 2 and 'pip install "tl-clt[ray]"' in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_loaded_model_is_not_shipped_to_ray(loaded, small_clt_dir, tmp_path):
    model, _ = loaded
    with pytest.raises(TypeError, match="pass the model as a path or hub id"):
        tl_clt.attribute_many(model, small_clt_dir, ["a"], tmp_path / "o", engine="ray")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------ Ray
ray_cluster = pytest.fixture(scope="module")(local_ray)


@pytest.fixture(scope="module")
def ray_engine(ray_cluster):
    """Two workers kept for several runs (loading a model in a fresh worker takes seconds)."""
    with tl_clt.batch.RayEngine(workers=2) as engine:
        yield engine


def test_ray_two_workers_match_attribute(ray_cluster, model_dir, small_clt_dir, reference, tmp_path):
    rows = [{"id": f"p/{i}", "prompt": p, "year": 2000 + i} for i, p in enumerate(PROMPTS)]
    rows.insert(2, {"id": "bad", "prompt": "", "year": 0})
    out = tmp_path / "run"
    prompts = write_jsonl(tmp_path / "p.jsonl", rows)
    tables = tl_clt.attribute_many(
        str(model_dir), str(small_clt_dir), prompts, out, engine="ray", workers=2, **OPTS, verbose=False
    )
    check_run(out, {r["id"]: r["prompt"] for r in rows}, reference)
    m = tables.manifest.set_index("id")
    assert m.loc["bad", "status"] == "failed" and "The prompt is empty" in m.loc["bad", "error"]
    assert (m.drop("bad")["status"] == "done").all()
    assert m["year"].to_dict() == {r["id"]: r["year"] for r in rows}  # extra fields kept
    pids = set(m["worker_pid"])
    assert len(pids) == 2 and os.getpid() not in pids  # two workers, neither of them this process
    assert not wait_gone(pids)  # the engine stopped its workers


def test_ray_more_workers_than_cpus_is_refused(ray_cluster, model_dir, small_clt_dir, tmp_path):
    with pytest.raises(ValueError, match="3 CPU needed, 2 in the cluster"):
        tl_clt.attribute_many(
            str(model_dir), str(small_clt_dir), ["a"], tmp_path / "o", engine="ray", workers=3
        )


def test_ray_killed_worker_is_retried_elsewhere(ray_engine, model_dir, small_clt_dir, reference, tmp_path):
    out = tmp_path / "run"
    killed = []

    def kill_a_busy_worker(record):
        if not killed:  # this worker has just been handed its next prompt
            os.kill(record["worker_pid"], signal.SIGKILL)
            killed.append(record["worker_pid"])

    prompts = PROMPTS + [p + " again" for p in PROMPTS]
    tables = tl_clt.attribute_many(
        str(model_dir),
        str(small_clt_dir),
        prompts,
        out,
        engine=ray_engine,
        **OPTS,
        verbose=False,
        on_record=kill_a_busy_worker,
    )
    check_run(out, {f"{i:06d}": p for i, p in enumerate(prompts)}, reference)
    m = tables.manifest
    assert (m["status"] == "done").all()
    retried = m[m["attempts"] == 2]
    assert len(retried) == 1 and (m["attempts"] <= 2).all()
    assert retried["worker_pid"].iloc[0] != killed[0]  # done by another worker
    seen = []
    tl_clt.attribute_many(
        str(model_dir),
        str(small_clt_dir),
        prompts,
        out,
        engine=ray_engine,
        **OPTS,
        verbose=False,
        on_record=seen.append,
    )
    assert seen == []  # a rerun has nothing left to do


def test_ray_ctrl_c_stops_the_workers(ray_engine, model_dir, small_clt_dir, tmp_path):
    out = tmp_path / "run"
    seen, pids = [], []

    def interrupt(record):
        seen.append(record)
        pids.extend(int(name.rsplit(":", 1)[1]) for name in ray_engine.worker_names)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tl_clt.attribute_many(
            str(model_dir),
            str(small_clt_dir),
            PROMPTS,
            out,
            engine=ray_engine,
            **OPTS,
            verbose=False,
            on_record=interrupt,
        )
    assert len(pids) >= 2 and not wait_gone(pids)  # no worker goes on with a prompt
    assert tl_clt.load_batch(out).manifest["id"].tolist() == [seen[0]["id"]]
    assert not [p for p in (out / "graphs").iterdir() if p.name.startswith(".")]
