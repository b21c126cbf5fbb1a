"""TransformerLens' TransformerBridge as a second backend: loading, the user's own boot, the sites' weights,
and transformer-lens 4.x (where HookedTransformer is gone). The algorithm suites run on both backends
through the `backend` fixture (tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPT, TL_MAJOR

import tl_clt
from tl_clt.sites import HOOKED_TRANSFORMER, TRANSFORMER_BRIDGE, sites_for


@pytest.fixture(scope="module")
def bridge(model_dir):
    return tl_clt.load_qwen3(model_dir, backend="bridge")


@pytest.mark.bridge
def test_bridge_logits_equal_transformers(bridge, model_dir):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tokens = tl_clt.to_tokens(bridge, PROMPT)[None]
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), hf(tokens).logits, atol=1e-5, rtol=0)
    assert sites_for(bridge).backend == TRANSFORMER_BRIDGE
    assert bridge.cfg.model_name == str(model_dir)


@pytest.mark.bridge
def test_final_residual_is_read_by_a_hook(bridge):
    """The bridge's stop_at_layer=n_layers returns logits; the sites read the final residual instead."""
    sites = sites_for(bridge)
    tokens = tl_clt.to_tokens(bridge, PROMPT)[None]
    n = bridge.cfg.n_layers
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens)
        resid = sites.forward_to(bridge, tokens, n)
        torch.testing.assert_close(resid, cache[f"blocks.{n - 1}.hook_resid_post"], atol=0, rtol=0)
        torch.testing.assert_close(sites.forward_to(bridge, tokens, 1), cache["blocks.1.hook_resid_pre"])


@pytest.mark.bridge
def test_a_bridge_booted_by_the_user_gives_the_same_graph(bridge, model_dir, small_clt_dir):
    """The README recipe: boot_transformers on a local folder, optionally compatibility mode without
    processing; the graph equals load_qwen3(backend='bridge')'s."""
    from transformer_lens.model_bridge import TransformerBridge

    own = TransformerBridge.boot_transformers(str(model_dir), device="cpu", dtype=torch.float32)
    own.enable_compatibility_mode(no_processing=True)
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(small_clt_dir, dtype=torch.float32)
    a = tl_clt.attribute(own, clt, PROMPT, max_n_logits=3, verbose=False)
    b = tl_clt.attribute(bridge, clt, PROMPT, max_n_logits=3, verbose=False)
    assert a.n_features > 5 and a.feature_keys.tolist() == b.feature_keys.tolist()
    torch.testing.assert_close(a.adjacency, b.adjacency, atol=1e-6 * float(b.adjacency.abs().max()), rtol=0)


def look_like_transformer_lens_4(monkeypatch) -> None:
    """On 3.x, make transformer_lens look like 4.x, where `HookedTransformer` raises ImportError."""
    if TL_MAJOR < 4:
        import transformer_lens

        def removed(name):
            raise ImportError(f"{name!r} was removed in TransformerLens 4.0.")

        monkeypatch.delattr(transformer_lens, "HookedTransformer")
        monkeypatch.setattr(transformer_lens, "__getattr__", removed, raising=False)


@pytest.mark.bridge
def test_what_needs_a_hooked_transformer_says_it_needs_transformer_lens_3(model_dir, monkeypatch):
    look_like_transformer_lens_4(monkeypatch)
    with pytest.raises(ImportError, match=r"needs transformer-lens 3\.x.*backend='bridge'"):
        tl_clt.load_qwen3(model_dir)
    with pytest.raises(ValueError, match="backend must be 'hooked'"):
        tl_clt.load_qwen3(model_dir, backend="bridged")


@pytest.mark.bridge
def test_backend_none_is_the_installed_transformer_lens_s(model_dir, monkeypatch):
    """backend=None: a HookedTransformer where transformer-lens 3.x is installed, a TransformerBridge on 4.x
    (and on a 3.x made to look like 4.x)."""
    from transformer_lens.model_bridge import TransformerBridge

    assert tl_clt.default_backend() == ("hooked" if TL_MAJOR < 4 else "bridge")
    if TL_MAJOR < 4:
        from transformer_lens import HookedTransformer

        assert type(tl_clt.load_qwen3(model_dir, backend=None)) is HookedTransformer
    look_like_transformer_lens_4(monkeypatch)
    assert tl_clt.default_backend() == "bridge"
    assert isinstance(tl_clt.load_qwen3(model_dir, backend=None), TransformerBridge)


@pytest.mark.hooked
def test_sites_give_the_same_weights_on_both_backends(bridge, model_dir):
    hooked = tl_clt.load_qwen3(model_dir)
    a, b = sites_for(hooked), sites_for(bridge)
    for layer in range(hooked.cfg.n_layers):
        for x, y in zip(
            a.attn_weights(hooked, layer) + a.norm_weights(hooked, layer),
            b.attn_weights(bridge, layer) + b.norm_weights(bridge, layer),
        ):
            torch.testing.assert_close(x, y)
    for path in (a.W_U, a.b_U, a.final_norm_weight):
        torch.testing.assert_close(a.weight(hooked, path), b.weight(bridge, path))


@pytest.mark.bridge
def test_added_hooks_run_as_model_hooks_does(bridge):
    """Our passes' hooks on a bridge go in as one filter hook: the same logits as the bridge's own
    `hooks()` with the same list (hooks at one point chained in list order, an alias and its point's own
    name the same point), the bridge's hook dict built a fixed number of times however many hooks there
    are, nothing left after, and an unknown name refused before any hook goes in."""
    from tl_clt.hooks import added_hooks

    calls = []

    def add(value, tag):
        def fn(tensor, *, hook):
            calls.append(tag)
            return tensor + value

        return fn

    def double(tensor, *, hook):
        calls.append("x2")
        return tensor * 2

    hooks = [
        ("blocks.0.hook_mlp_out", add(1.0, "alias +1")),  # the HookedTransformer name of the point below
        ("blocks.0.mlp.hook_out", double),
        ("blocks.1.hook_resid_pre", add(-0.5, "resid")),
        ("blocks.0.hook_mlp_out", add(0.25, "again")),
    ]
    tokens = tl_clt.to_tokens(bridge, PROMPT)[None]
    with torch.no_grad():
        with bridge.hooks(fwd_hooks=hooks):
            expected = bridge(tokens)
        order = list(calls)
        calls.clear()
        with added_hooks(bridge, hooks):
            got = bridge(tokens)
        plain = bridge(tokens)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert calls == order == ["alias +1", "x2", "again", "resid"]
    assert (got - plain).abs().max() > 1e-2
    assert not any(hp.fwd_hooks for hp in bridge.hook_dict.values())
    with pytest.raises(KeyError, match="blocks.0.no_such_hook"):
        added_hooks(bridge, [*hooks, ("blocks.0.no_such_hook", double)])
    assert not any(hp.fwd_hooks for hp in bridge.hook_dict.values())
    builds = []
    cls = type(bridge)
    original = cls.hook_dict
    try:
        cls.hook_dict = property(lambda self: builds.append(1) or original.fget(self))
        counts = []
        for n in (1, 40):
            builds.clear()
            with added_hooks(bridge, hooks[1:2] * n):
                pass
            counts.append(len(builds))
        assert counts[0] == counts[1] <= 5, counts  # the bridge's own hooks(): one more per named hook
    finally:
        cls.hook_dict = original


@pytest.mark.bridge
def test_demo_runs_on_the_bridge(tmp_path, capsys, monkeypatch):
    """`tl-clt demo` on a TransformerBridge: what transformer-lens 4.x gets by default (shown here by
    making 3.x look like 4.x). Its graph line and groups are those the API computes on the bridge, and on
    3.x the same lines as the HookedTransformer's demo (the two backends give the same graphs)."""
    from tl_clt.cli import main
    from tl_clt.toyworld import load_toyworld
    from tl_clt.toyworld.story import SEED

    def lines(out: str) -> list[str]:  # the prediction, the graph and the groups (not the 2-digit table)
        return [
            line
            for line in out.splitlines()
            if line.startswith(("prediction:", "graph:")) or (line.startswith("  ") and " e.g. " in line)
        ]

    import tl_clt.toyworld

    loaded = []

    def spy(*args, **kwargs):
        model, clt = load_toyworld(*args, **kwargs)
        loaded.append(sites_for(model).backend)
        return model, clt

    monkeypatch.setattr(tl_clt.toyworld, "load_toyworld", spy)
    if TL_MAJOR < 4:
        assert main(["demo", "-o", str(tmp_path / "hooked"), "-q", "--backend", "hooked"]) == 0
        hooked = lines(capsys.readouterr().out)
        assert main(["demo", "-o", str(tmp_path / "asked"), "-q", "--backend", "bridge"]) == 0
        assert lines(capsys.readouterr().out) == hooked
    look_like_transformer_lens_4(monkeypatch)  # the default is then the bridge
    assert main(["demo", "-o", str(tmp_path / "bridge"), "-q"]) == 0
    out = lines(capsys.readouterr().out)
    assert loaded == ([HOOKED_TRANSFORMER, TRANSFORMER_BRIDGE] if TL_MAJOR < 4 else []) + [TRANSFORMER_BRIDGE]
    model, clt = load_toyworld()
    assert sites_for(model).backend == TRANSFORMER_BRIDGE
    graph = tl_clt.attribute(model, clt, SEED.prompt, verbose=False)
    pruned = graph.prune(0.8, 0.98)
    proposals = tl_clt.propose_supernodes(pruned, model=model, clt=clt, unpruned=graph)
    assert out[0].startswith("prediction: ' Barack'")
    assert out[1].startswith(f"graph: {graph.n_features} features;")
    assert out[1].endswith(f"pruned to {pruned.to_networkx().number_of_nodes()} nodes")
    assert [line.split(":")[0].strip() for line in out[2:]] == list(proposals)
    for line, (name, members) in zip(out[2:], proposals.items(), strict=True):
        assert f": {len(members)} node" in line and members[0] in line, name
    assert (tmp_path / "bridge" / "circuit.png").read_bytes()[:4] == b"\x89PNG"
    if TL_MAJOR < 4:
        assert out == hooked


@pytest.mark.bridge
def test_batch_loads_paths_with_the_backend_asked_for(model_dir, small_clt_dir, tmp_path):
    """attribute_many with paths and backend="bridge": each worker loads a TransformerBridge, and the graph
    it writes is the one `attribute` gives on a bridge loaded here."""
    from tl_clt.batch.attribute_job import Loader

    model, _ = Loader(str(model_dir), str(small_clt_dir), backend="bridge")()
    assert sites_for(model).backend == TRANSFORMER_BRIDGE
    tables = tl_clt.attribute_many(
        str(model_dir), str(small_clt_dir), [PROMPT], tmp_path / "run", backend="bridge", max_n_logits=3,
        verbose=False,
    )  # fmt: skip
    assert tables.manifest["status"].tolist() == ["done"]
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(small_clt_dir, dtype=torch.float32)
    expected = tl_clt.attribute(model, clt, PROMPT, max_n_logits=3, verbose=False)
    saved = tl_clt.AttributionGraph.load(next((tmp_path / "run" / "graphs").glob("*.pt")))
    torch.testing.assert_close(saved.adjacency, expected.adjacency)
    with pytest.raises(ValueError, match="backend= applies when the model is loaded from a path"):
        tl_clt.attribute_many(model, clt, [PROMPT], tmp_path / "x", backend="bridge")
    with pytest.raises(ValueError, match="backend must be 'hooked', 'bridge' or None"):
        tl_clt.attribute_many(str(model_dir), str(small_clt_dir), [PROMPT], tmp_path / "y", backend="tl4")


@pytest.mark.bridge
def test_cli_loads_the_backend_asked_for(bridge, model_dir, small_clt_dir, tmp_path, capsys):
    """`tl-clt attribute --backend bridge` attributes on a TransformerBridge: its graph is the one the API
    gives on a bridge, and it says which backend it loaded."""
    from tl_clt.cli import main

    out = ["-o", str(tmp_path / "g.json"), "--pt", str(tmp_path / "g.pt"), "--max-n-logits", "3"]
    args = ["attribute", "--model", str(model_dir), "--clt", str(small_clt_dir), "--prompt", PROMPT, *out]
    assert main([*args, "--backend", "bridge"]) == 0
    assert "(float32, cpu, bridge)" in capsys.readouterr().err
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(small_clt_dir, dtype=torch.float32)
    expected = tl_clt.attribute(bridge, clt, PROMPT, max_n_logits=3, verbose=False)
    torch.testing.assert_close(tl_clt.AttributionGraph.load(tmp_path / "g.pt").adjacency, expected.adjacency)
    with pytest.raises(SystemExit) as info:
        main([*args, "--backend", "bridged"])
    assert info.value.code == 2
    # --quiet: nothing on stderr, not even transformers' "Loading weights" bar as the bridge boots; the
    # bars are on again after
    from transformers.utils import logging

    capsys.readouterr()
    assert main([*args, "--backend", "bridge", "-q"]) == 0
    assert capsys.readouterr().err == "" and logging.is_progress_bar_enabled()


@pytest.mark.bridge
def test_building_the_toy_world_on_transformer_lens_4_says_it_needs_3(tmp_path, monkeypatch):
    """The shipped world is rebuilt byte for byte on a HookedTransformer only: on 4.x the build stops at
    once with what to install, before writing anything."""
    from tl_clt.toyworld.build import build

    look_like_transformer_lens_4(monkeypatch)
    with pytest.raises(RuntimeError, match=r"needs transformer-lens 3\.x.*'transformer-lens>=3,<4'"):
        build(tmp_path / "world")
    assert not (tmp_path / "world").exists()


@pytest.mark.bridge
def test_rewriting_the_shipped_dashboards_on_transformer_lens_4_is_refused(monkeypatch, capsys):
    import sys

    from tl_clt.toyworld import dashboards

    look_like_transformer_lens_4(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["dashboards"])
    with pytest.raises(SystemExit) as info:
        dashboards.main()
    assert info.value.code == 2 and "needs transformer-lens 3.x" in capsys.readouterr().err
