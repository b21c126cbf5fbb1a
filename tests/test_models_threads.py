"""Models, threads and hooks (issue 15, model side): what tl_clt guarantees when the model is shared.

- two tl_clt calls on one model from two threads give the graphs of sequential calls (a per-model lock);
- no state survives from one forward pass to the next in replacement / steering hooks (`start_at_layer`);
- graphs record the model and CLT that made them; reusing a graph with another CLT is an error;
- SAELens SAEs attached with their error term are routed around (exact graphs), without it refused;
- the user's forward hooks are recorded and warned about, their backward hooks switched off while we run.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import torch
from conftest import PROMPT

import tl_clt
from tl_clt import CrossLayerTranscoder, Intervention, synthetic
from tl_clt.hooks import UserHookWarning

OTHER = "The cat sat on the mat because it was"


@pytest.fixture(scope="module")
def model(model_dir):
    return tl_clt.load_qwen3(model_dir)


@pytest.fixture(scope="module")
def clt(small_clt_dir):
    return CrossLayerTranscoder.from_pretrained(small_clt_dir, dtype=torch.float32)


def _attr(model, clt, prompt):
    return tl_clt.attribute(model, clt, prompt, max_n_logits=3, batch_size=4, verbose=False)


# ------------------------------------------------------------------------ threads
def test_two_threads_give_the_graphs_of_sequential_calls(model, clt):
    """attribute / steer / feature_activations in three threads at once == the same calls one by one."""
    expected = {p: _attr(model, clt, p) for p in (PROMPT, OTHER)}
    iv = Intervention(0, 1, 0, 3.0)
    steered = tl_clt.steer(model, clt, OTHER, [iv])
    acts = tl_clt.feature_activations(model, clt, PROMPT).to_dense()
    for _round in range(3):
        results, errors = {}, []
        barrier = threading.Barrier(4)

        def run(key, fn, barrier=barrier, results=results, errors=errors):
            barrier.wait()
            try:
                results[key] = fn()
            except Exception as err:  # noqa: BLE001  (reported below, with the thread's key)
                errors.append((key, repr(err)))

        jobs = {
            "a": lambda: _attr(model, clt, PROMPT),
            "b": lambda: _attr(model, clt, OTHER),
            "steer": lambda: tl_clt.steer(model, clt, OTHER, [iv]),
            "acts": lambda: tl_clt.feature_activations(model, clt, PROMPT).to_dense(),
        }
        threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert torch.equal(results["a"].adjacency, expected[PROMPT].adjacency)
        assert torch.equal(results["b"].adjacency, expected[OTHER].adjacency)
        assert torch.equal(results["steer"], steered)
        assert torch.equal(results["acts"], acts)
    assert not any(hp.fwd_hooks or hp.bwd_hooks for hp in model.hook_dict.values())


# ------------------------------------------------------------------------ no state between passes
def test_replacement_hooks_keep_nothing_between_forward_passes(model, clt):
    """`model(resid, start_at_layer=1)` gives the same output whatever prompt ran before."""
    resid = model(tl_clt.to_tokens(model, OTHER)[None], stop_at_layer=1)
    with model.hooks(fwd_hooks=tl_clt.replacement_hooks(model, clt)), torch.no_grad():
        fresh = model(resid, start_at_layer=1)
    with model.hooks(fwd_hooks=tl_clt.replacement_hooks(model, clt)), torch.no_grad():
        model(tl_clt.to_tokens(model, PROMPT)[None])  # another prompt first
        after = model(resid, start_at_layer=1)
        model(tl_clt.to_tokens(model, PROMPT)[None], stop_at_layer=2)  # a pass cut short
        after_cut = model(resid, start_at_layer=1)
        full = model(tl_clt.to_tokens(model, OTHER)[None])
    torch.testing.assert_close(after, fresh, rtol=0, atol=0)
    torch.testing.assert_close(after_cut, fresh, rtol=0, atol=0)
    # within one pass the cross-layer writes still arrive: the full pass is the replacement model
    with model.hooks(fwd_hooks=tl_clt.replacement_hooks(model, clt)), torch.no_grad():
        again = model(tl_clt.to_tokens(model, OTHER)[None])
    torch.testing.assert_close(full, again, rtol=0, atol=0)


def test_steering_hooks_keep_nothing_between_forward_passes(model, clt):
    tokens = tl_clt.to_tokens(model, OTHER)
    hooks = tl_clt.steering_hooks(model, clt, [Intervention(0, 1, 0, 5.0)], freeze_attention=False)
    resid = model(tokens[None], stop_at_layer=1)
    with model.hooks(fwd_hooks=hooks), torch.no_grad():
        fresh = model(resid, start_at_layer=1)
        model(tokens[None], stop_at_layer=2)  # layer 0 writes to layers 1 and 2; only layer 1 is read
        after_cut = model(resid, start_at_layer=1)
    torch.testing.assert_close(after_cut, fresh, rtol=0, atol=0)


# ------------------------------------------------------------------------ reconstruction report
def test_reconstruction_report_of_one_token_says_fvu_is_undefined(model, clt):
    one = tl_clt.to_tokens(model, [5])
    report = tl_clt.reconstruction_report(model, clt, one)
    assert all(np.isnan(report.fvu)), report.fvu
    assert "FVU is undefined" in report.note and "FVU is undefined" in str(report)
    two = tl_clt.reconstruction_report(model, clt, tl_clt.to_tokens(model, [5, 9]))
    assert all(np.isfinite(two.fvu)) and not two.note


# ------------------------------------------------------------------------ which CLT made a graph
@pytest.fixture(scope="module")
def other_clt(tmp_path_factory):
    folder = synthetic.make_random_clt_folder(
        tmp_path_factory.mktemp("other") / "clt", 3, 64, 16, density=0.2, model_name="tiny-qwen3", seed=7
    )
    return CrossLayerTranscoder.from_pretrained(folder, dtype=torch.float32)


def test_graph_records_model_and_clt_and_refuses_another_clt(model, clt, other_clt, small_clt_dir):
    graph = _attr(model, clt, PROMPT)
    assert graph.meta["clt_fingerprint"]["shape"] == [3, 64, 16]
    assert graph.meta["model_fingerprint"]["name"] == model.cfg.model_name
    key = tuple(graph.active_features[0].tolist())
    ivs = tl_clt.scale([key], 0.0, graph)
    tl_clt.steer(model, clt, PROMPT, ivs)  # the CLT that made it: fine
    same_in_bf16 = CrossLayerTranscoder.from_pretrained(small_clt_dir, dtype=torch.bfloat16)
    tl_clt.steer(model, same_in_bf16.to(torch.float32), PROMPT, ivs)  # the same CLT in another dtype
    with pytest.raises(ValueError, match="made with another CLT"):
        tl_clt.steer(model, other_clt, PROMPT, ivs)
    with pytest.raises(ValueError, match="made with another CLT"):
        tl_clt.steer(model, other_clt, PROMPT, tl_clt.group_interventions(graph, [key], 2.0))
    with pytest.raises(ValueError, match="made with another CLT"):
        tl_clt.contrast_features(model, other_clt, graph, PROMPT)
    loaded = tl_clt.AttributionGraph.load(_saved(graph))
    with pytest.raises(ValueError, match="made with another CLT"):
        tl_clt.steer(model, other_clt, PROMPT, tl_clt.scale([key], 0.0, loaded))


def _saved(graph):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "g.pt"
    graph.save(path)
    return path


# ------------------------------------------------------------------------ the user's hooks
@pytest.fixture(scope="module")
def any_model(model_dir, backend):
    """The tiny Qwen3 on each TransformerLens backend (a bridge lists aliased hook points twice)."""
    return tl_clt.load_qwen3(model_dir, backend=backend)


def test_user_forward_hook_is_warned_about_and_recorded(any_model, clt):
    model = any_model
    calls = []
    model.add_hook("blocks.1.hook_attn_out", lambda t, hook: calls.append(1))
    try:
        with pytest.warns(UserHookWarning, match="blocks.1.hook_attn_out"):
            graph = _attr(model, clt, PROMPT)
    finally:
        model.reset_hooks()
    assert graph.meta["user_hooks"] == ["blocks.1.hook_attn_out"] and calls
    assert _attr(model, clt, PROMPT).meta["user_hooks"] == []


def test_user_backward_hook_is_switched_off_during_our_passes_and_kept(any_model, clt):
    model = any_model
    expected = _attr(model, clt, PROMPT)
    calls = []
    model.add_hook("blocks.1.hook_resid_mid", lambda g, hook: calls.append(1), dir="bwd")
    try:
        with pytest.warns(UserHookWarning, match="switches them off"):
            graph = _attr(model, clt, PROMPT)
        assert calls == [] and graph.meta["user_backward_hooks"] == ["blocks.1.hook_resid_mid"]
        torch.testing.assert_close(graph.adjacency, expected.adjacency, rtol=0, atol=0)
        with torch.enable_grad():  # the user's hook still fires on the user's own backward pass
            for p in model.parameters():
                p.requires_grad_(True)
            model(tl_clt.to_tokens(model, PROMPT)[None]).sum().backward()
        assert calls == [1]
    finally:
        model.reset_hooks(including_permanent=True)
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None


def test_attribute_under_inference_mode_and_no_grad_gives_the_same_graph_and_no_warning(model, clt):
    expected = _attr(model, clt, PROMPT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.inference_mode():
            inside = _attr(model, clt, tl_clt.to_tokens(model, PROMPT))
        torch.set_grad_enabled(False)  # TransformerLens' from_pretrained users often run like this
        try:
            no_grad = _attr(model, clt, PROMPT)
        finally:
            torch.set_grad_enabled(True)
    torch.testing.assert_close(inside.adjacency, expected.adjacency, rtol=0, atol=0)
    torch.testing.assert_close(no_grad.adjacency, expected.adjacency, rtol=0, atol=0)


def test_scalars_as_tensors_and_numpy_are_numbers(model, clt):
    expected = tl_clt.attribute(model, clt, PROMPT, max_n_logits=3, desired_logit_prob=0.9, verbose=False)
    graph = tl_clt.attribute(
        model,
        clt,
        PROMPT,
        max_n_logits=np.int64(3),
        desired_logit_prob=torch.tensor(0.9),
        batch_size=torch.tensor(64),
        verbose=False,
    )
    assert torch.equal(graph.adjacency, expected.adjacency)
    a, b = graph.prune(np.float32(0.5), torch.tensor(0.9)), graph.prune(0.5, 0.9)
    assert torch.equal(a.node_mask, b.node_mask)
    key = tuple(graph.active_features[0].tolist())
    assert tl_clt.scale([key], np.float64(2.0), graph) == tl_clt.scale([key], 2.0, graph)
    assert len(tl_clt.top_inputs(graph, graph.node_ids()[-1], k=np.int64(2))) <= 2


def test_generate_with_a_tiny_temperature_is_greedy(model, clt):
    greedy = tl_clt.generate(model, clt, PROMPT, [], max_new_tokens=3, return_type="tokens")
    tiny = tl_clt.generate(model, clt, PROMPT, [], max_new_tokens=3, temperature=1e-45, return_type="tokens")
    assert torch.equal(greedy, tiny)


def test_generate_past_the_context_fails_before_any_work(model, clt, monkeypatch):
    import tl_clt.generation as generation

    ran = []
    monkeypatch.setattr(generation, "run_steered", lambda *a, **k: ran.append(1))
    n = len(tl_clt.to_tokens(model, PROMPT))
    with pytest.raises(ValueError, match="but the model's context is"):
        tl_clt.generate(model, clt, PROMPT, [], max_new_tokens=model.cfg.n_ctx - n + 1)
    assert ran == []


def test_cli_scale_of_an_inactive_feature_fails_like_tl_clt_scale(
    model, clt, model_dir, small_clt_dir, capsys
):
    from tl_clt.cli import main

    acts = tl_clt.feature_activations(model, clt, PROMPT).to_dense()
    feature = next(f for f in range(clt.n_features) if acts[0, 1, f] == 0)
    with pytest.raises(KeyError, match="is not active in this prompt"):
        tl_clt.scale([(0, 1, feature)], 2.0, acts)
    argv = ["steer", "--model", str(model_dir), "--clt", str(small_clt_dir), "--prompt", PROMPT]
    code = main([*argv, "--set", f"0:1:{feature}=*2"])
    assert code == 1 and "is not active in this prompt" in capsys.readouterr().err
    code = main([*argv, "--set", f"0:1:{feature}=0", "--generate", str(model.cfg.n_ctx)])
    captured = capsys.readouterr()
    assert code == 1 and "but the model's context is" in captured.err and "steering" not in captured.out
