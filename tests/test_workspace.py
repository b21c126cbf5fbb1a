"""tl_clt.Workspace: graphs that reuse one are the graphs made with fresh buffers, keep nothing of it, and
one workspace never serves two graphs at once."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import PROMPT
from graph_factory import assert_same_graph

import tl_clt
from tl_clt import attribution
from tl_clt.targets import TargetError

# buffers grow (longer prompt), shrink (shorter) and change dtype between graphs
RUNS = [
    dict(prompt=PROMPT),
    dict(prompt=PROMPT + " a long time ago in the year of", max_feature_nodes=9),
    dict(prompt="Fact: The", compute_dtype=torch.float64),
    dict(prompt=PROMPT, decoder_cache_bytes=0),  # decoder rows read per sweep, not laid out per target
    dict(prompt=PROMPT + " then", engine="autograd"),
    dict(prompt=PROMPT, targets=[7, tl_clt.logit_diff(7, 11)], max_feature_nodes=5),
]


def _graph(model, clt, run, **kwargs):
    run = dict(run)
    return tl_clt.attribute(model, clt, run.pop("prompt"), verbose=False, batch_size=4, **run, **kwargs)


def test_graphs_with_one_workspace_equal_fresh_graphs_and_keep_nothing_of_it(model_dir, clt):
    """Every graph made with a shared workspace equals the one made with fresh buffers, compared after all
    of them were made: a graph holding a view of the workspace would have been overwritten by the next."""
    model = tl_clt.load_qwen3(model_dir, backend=None)
    ws = tl_clt.Workspace()
    reused = [_graph(model, clt, run, workspace=ws) for run in RUNS]
    assert len(ws) > 0 and ws.nbytes > 0
    for run, graph in zip(RUNS, reused, strict=True):
        fresh = _graph(model, clt, run)
        assert_same_graph(graph, fresh, skip=("meta",))
        assert graph.meta["engine"] == fresh.meta["engine"]


def test_what_a_graph_leaves_in_the_workspace_is_never_read_by_the_next(model_dir, clt):
    """Buffers come back uninitialised: with every one of them filled with NaN between graphs (influence's
    B^T included: max_feature_nodes), the graphs are still the fresh ones."""
    model = tl_clt.load_qwen3(model_dir, backend=None)
    ws = tl_clt.Workspace()
    for run in RUNS:
        _graph(model, clt, run, workspace=ws)
        for buf in ws._buffers.values():
            buf.fill_(float("nan"))
        assert "influence_BT" in ws._buffers or "max_feature_nodes" not in run
        for again in (run, RUNS[1]):
            graph = _graph(model, clt, again, workspace=ws)
            assert_same_graph(graph, _graph(model, clt, again), skip=("meta",))
            for buf in ws._buffers.values():
                buf.fill_(float("nan"))


def test_the_next_graph_reuses_the_memory(model_dir, clt):
    """A second graph of the same prompt allocates nothing: every buffer is where it was."""
    model = tl_clt.load_qwen3(model_dir, backend=None)
    ws = tl_clt.Workspace()
    _graph(model, clt, RUNS[0], workspace=ws)
    where = {name: buf.data_ptr() for name, buf in ws._buffers.items()}
    assert {"rows", "decoder_by_target", "G", "g"} <= set(where)
    _graph(model, clt, RUNS[0], workspace=ws)
    assert {name: buf.data_ptr() for name, buf in ws._buffers.items()} == where


def test_the_decoder_budget_counts_what_the_workspace_holds(model_dir, clt, monkeypatch):
    model = tl_clt.load_qwen3(model_dir, backend=None)
    ws = tl_clt.Workspace()
    _graph(model, clt, RUNS[0], workspace=ws)
    held = ws.bytes_on("cpu")
    seen = []
    budget = attribution.default_decoder_cache_bytes
    monkeypatch.setattr(
        attribution,
        "default_decoder_cache_bytes",
        lambda d, r, reusable_bytes: seen.append(reusable_bytes) or budget(d, r, reusable_bytes),
    )
    _graph(model, clt, RUNS[0], workspace=ws)
    _graph(model, clt, RUNS[0])
    assert seen == [held, 0] and held > 0


def test_a_workspace_in_use_by_another_thread_is_refused_and_the_model_left_alone(model_dir, clt):
    model = tl_clt.load_qwen3(model_dir, backend=None)
    before = model(tl_clt.to_tokens(model, PROMPT)[None])
    ws = tl_clt.Workspace()
    holding, done = threading.Event(), threading.Event()

    def other_graph():
        with ws.in_use():
            holding.set()
            done.wait(30)

    thread = threading.Thread(target=other_graph)
    thread.start()
    try:
        assert holding.wait(30)
        with pytest.raises(tl_clt.WorkspaceBusyError, match="Give each thread its own"):
            _graph(model, clt, RUNS[0], workspace=ws)
        with pytest.raises(tl_clt.WorkspaceBusyError):
            ws.clear()
    finally:
        done.set()
        thread.join()
    assert not model.hook_dict["blocks.0.hook_resid_pre"].fwd_hooks
    assert torch.equal(model(tl_clt.to_tokens(model, PROMPT)[None]), before)
    _graph(model, clt, RUNS[0], workspace=ws)  # free again


def test_a_failed_graph_gives_the_workspace_back(model_dir, clt):
    model = tl_clt.load_qwen3(model_dir, backend=None)
    ws = tl_clt.Workspace()
    with pytest.raises(TargetError):
        _graph(model, clt, dict(prompt=PROMPT, targets=["F:0:99:0"]), workspace=ws)
    graph = _graph(model, clt, RUNS[0], workspace=ws)
    assert_same_graph(graph, _graph(model, clt, RUNS[0]), skip=("meta",))


def test_clear_gives_the_memory_back_and_the_workspace_shows_what_it_holds(model_dir, clt):
    model = tl_clt.load_qwen3(model_dir, backend=None)
    ws = tl_clt.Workspace()
    assert repr(ws) == "Workspace(0 buffers, 0.00 GB)"
    _graph(model, clt, RUNS[0], workspace=ws)
    n = len(ws)
    assert repr(ws) == f"Workspace({n} buffers, {ws.nbytes / 1e9:.2f} GB)" and n >= 4
    assert ws.bytes_on("cpu") == ws.nbytes
    ws.clear()
    assert len(ws) == 0 and ws.nbytes == 0
