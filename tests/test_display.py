"""Things display themselves (issue 14, parts 2 and 5): reprs and HTML of graphs, CLTs and feature
activations, graph equality, pandas tables, graph positions vs TransformerLens' tokens, no
requires_grad or tqdm warnings from our calls."""

from __future__ import annotations

import copy
import io
import sys
import warnings
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from conftest import PROMPT
from graph_factory import make_graph
from IPython.core.formatters import DisplayFormatter

import tl_clt
from tl_clt import progress
from tl_clt.display import FeatureActivations, visible_token

FEATURES = [(0, 1, 3), (0, 2, 5), (1, 2, 4), (1, 3, 1), (2, 3, 8), (2, 4, 9)]


@pytest.fixture(scope="module")
def graph():
    return make_graph(FEATURES, n_layers=3, n_pos=5, density=0.8)


def test_graph_repr_is_short_and_says_what_matters(graph):
    text = repr(graph)
    assert len(text.splitlines()) <= 7 and "tensor(" not in text
    assert "' t1 t2 t3 t4'" in text and "5 positions (0 = '<|endoftext|>', the attention sink)" in text
    # nodes by kind: errors at the sink position are not nodes (3 layers x 4 positions)
    assert "6 features, 12 errors, 5 tokens, 2 logits" in text
    assert "not pruned" in text
    top = f"' out0' {float(graph.logit_probabilities[0]):.3f}"
    assert f"top logits: {top}" in text
    pruned = graph.prune(0.5, 0.9)
    kept = {k: 0 for k in ("feature", "error", "token", "logit")}
    for _, d in pruned.to_networkx().nodes(data=True):
        kept[d["kind"]] += 1
    assert (
        f"pruned, kept {kept['feature']}/6 features, {kept['error']}/12 errors, 5/5 tokens, 2/2 logits"
        in repr(pruned)
    )
    html = DisplayFormatter().format(pruned)[0]["text/html"]
    assert "<table" in html and "tensor(" not in html and len(html) < 5000
    assert "pruned" in html and "out0" in html


def test_graph_equality_is_by_value_and_never_raises(graph, tmp_path):
    graph.save(tmp_path / "g.pt")
    loaded = tl_clt.AttributionGraph.load(tmp_path / "g.pt")
    assert loaded is not graph and loaded == graph
    assert not loaded.__ne__(graph)
    other = copy.deepcopy(graph)
    other.meta["seconds_rows"] = 123.0  # timings are not compared
    assert other == graph
    other.adjacency[0, 0] += 1.0
    assert other != graph
    assert graph != graph.prune(0.5, 0.9)
    assert (graph == "a graph") is False
    smaller = make_graph(FEATURES[:3], n_layers=3, n_pos=5)
    assert graph != smaller  # different shapes: False, not a RuntimeError


def test_nodes_df_and_edges_df_match_networkx(graph):
    pruned = graph.prune(0.6, 0.95)
    G = pruned.to_networkx()
    nodes, edges = pruned.nodes_df(), pruned.edges_df()
    assert isinstance(nodes, pd.DataFrame) and isinstance(edges, pd.DataFrame)
    assert list(nodes.index) == list(G.nodes)
    for node, row in nodes.iterrows():
        d = G.nodes[node]
        assert row["kind"] == d["kind"] and row["influence"] == pytest.approx(d["influence"])
        if d["kind"] == "feature":
            assert (row["layer"], row["pos"], row["feature"]) == (d["layer"], d["pos"], d["feature"])
            assert row["activation"] == pytest.approx(d["activation"])
    assert len(edges) == G.number_of_edges()
    for _, e in edges.iterrows():
        assert G.edges[e["source"], e["target"]]["weight"] == pytest.approx(e["weight"])
        assert e["source_kind"] == G.nodes[e["source"]]["kind"]
    assert list(edges["weight"].abs()) == sorted(edges["weight"].abs(), reverse=True)


def test_clt_and_feature_activations_display_compactly(model, clt):
    text = repr(clt)
    assert "3 layers x 96 features, d_model 64" in text and "float32" in text
    assert "lazy" in text and "mlp.hook_in" in text and str(clt.path) in text
    assert "<table" in clt._repr_html_()
    acts = tl_clt.feature_activations(model, clt, PROMPT)
    assert isinstance(acts, torch.Tensor) and isinstance(acts, FeatureActivations)
    dense = acts.to_dense()
    assert type(dense) is torch.Tensor  # any torch operation gives a plain tensor
    text = repr(acts)
    n = int((dense != 0).sum())
    assert len(text) < 400 and f"{n} active of 3 layers" in text and "tensor(" not in text
    best = dense.flatten().argmax()
    layer, pos, feature = (int(i) for i in torch.unravel_index(best, dense.shape))
    assert f"F:{layer}:{pos}:{feature} = {float(dense.max()):.3g}" in text
    assert "<table" in DisplayFormatter().format(acts)[0]["text/html"]
    buf = io.BytesIO()
    torch.save(acts, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)  # saved as a plain sparse tensor
    assert type(loaded) is torch.Tensor and torch.equal(loaded.to_dense(), dense)
    assert torch.equal(copy.deepcopy(acts).to_dense(), dense)


def test_visible_tokens():
    assert visible_token(" ") == "␣" and visible_token("  ") == "␣␣" and visible_token("\n") == "⏎"
    assert visible_token(" president") == " president" and visible_token("a\nb") == "a⏎b"
    assert visible_token("") == "∅" and visible_token("abcdefghij", 5) == "abcd…"


# ------------------------------------------------------------------------ TransformerLens conventions
def test_graph_positions_map_to_model_to_str_tokens(model, small_clt_dir):
    """Graph position p is model.to_str_tokens(prompt)[p - graph.prompt_offset]; token ids from
    model.to_tokens give the same graph as the text."""
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(small_clt_dir)
    g = tl_clt.attribute(model, clt, PROMPT, max_n_logits=2, verbose=False)
    tl_strs = model.to_str_tokens(PROMPT)
    assert g.prompt_offset == 1 and g.meta["prompt_type"] == "text"
    assert g.str_tokens == g.token_strs == tl_clt.prompts.to_str_tokens(model, PROMPT)
    assert [g.str_tokens[p] for p in range(1, g.n_pos)] == [
        tl_strs[p - g.prompt_offset] for p in range(1, g.n_pos)
    ]
    from_tl = tl_clt.attribute(model, clt, model.to_tokens(PROMPT), max_n_logits=2, verbose=False)
    assert from_tl == g and from_tl.prompt_offset == 1 and from_tl.meta["prompt_type"] == "token ids"
    # a prompt that already starts with the sink: nothing is put in front, positions line up 1:1
    with_sink = torch.cat([g.tokens[:1], model.to_tokens(PROMPT)[0]])
    same = tl_clt.attribute(model, clt, with_sink, max_n_logits=2, verbose=False)
    assert same == g and same.prompt_offset == 0


def test_no_requires_grad_warnings_under_tls_default_grad_mode(model, clt):
    """TL leaves autograd on; our calls must not warn about tensors that require grad."""
    assert torch.is_grad_enabled()
    tokens = tl_clt.to_tokens(model, PROMPT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = tl_clt.attribute(model, clt, PROMPT, max_n_logits=2, verbose=False)
        acts = tl_clt.feature_activations(model, clt, PROMPT)
        str(tl_clt.reconstruction_report(model, clt, PROMPT))
        layer, pos, feature = g.feature_keys[0].tolist()
        ivs = tl_clt.scale([(layer, pos, feature)], 2.0, acts)
        steered = tl_clt.steer(model, clt, PROMPT, ivs)
        str(tl_clt.prediction_table(model, model(tokens[None]), steered))  # logits that require grad
        tl_clt.generate(model, clt, PROMPT, ivs, max_new_tokens=2)
        tl_clt.feature_output_tokens(model, clt, layer, feature, k=3)
        repr(g), g.nodes_df(), g.edges_df()
    grad = [str(w.message) for w in caught if "requires_grad" in str(w.message)]
    assert grad == []


def test_progress_bars_never_ask_for_missing_widgets(monkeypatch, capsys):
    """In a Jupyter kernel without ipywidgets tqdm.auto warns "IProgress not found"; we pick the text
    bar there, the widget where ipywidgets is installed, and the text bar outside a kernel."""
    from tqdm.std import tqdm as text_bar

    kernel = SimpleNamespace(get_ipython=lambda: SimpleNamespace(config={"IPKernelApp": {}}))
    monkeypatch.setitem(sys.modules, "IPython", kernel)
    monkeypatch.setattr(progress, "has_widgets", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bar = progress.tqdm(total=3, disable=True)
    assert type(bar) is text_bar
    monkeypatch.setattr(progress, "has_widgets", lambda: True)
    pytest.importorskip("ipywidgets")
    from tqdm.notebook import tqdm as widget_bar

    assert isinstance(progress.tqdm(total=3, disable=True), widget_bar)
    monkeypatch.setitem(sys.modules, "IPython", SimpleNamespace(get_ipython=lambda: None))
    assert type(progress.tqdm(total=3, disable=True)) is text_bar
