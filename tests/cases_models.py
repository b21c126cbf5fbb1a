"""The bad-input cases of docs/errors.md's "Models, threads and hooks" section (issue 15, model side).

`tests/test_bad_inputs.py` runs them with its other cases (`CASES`), reading the expected exception and
message excerpt from the table; each `case_<id>` takes the shared context `c` (model, clt, graph, tmp).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from conftest import PROMPT

import tl_clt
from tl_clt import CrossLayerTranscoder, Intervention, synthetic
from tl_clt.fingerprints import GraphMismatchWarning
from tl_clt.hooks import UserHookWarning

EXCEPTIONS = {
    "UserHookWarning": UserHookWarning,
    "GraphMismatchWarning": GraphMismatchWarning,
    "UnsupportedModelError": tl_clt.UnsupportedModelError,
}


def _logit(c) -> str:
    return c.graph.node_ids()[-1]


def _other_clt(c) -> CrossLayerTranscoder:
    folder = synthetic.make_random_clt_folder(c.tmp / "other", 3, 64, 16, density=0.2, seed=7)
    return CrossLayerTranscoder.from_pretrained(folder, dtype=torch.float32)


def _key(c) -> tuple[int, int, int]:
    return tuple(c.graph.active_features[0].tolist())


# ------------------------------------------------------------------------ k everywhere
def case_top_inputs_k_negative(c):
    tl_clt.top_inputs(c.graph, _logit(c), k=-1)


def case_top_outputs_k_zero(c):
    tl_clt.top_outputs(c.graph, "T:1", k=0)


def case_features_at_k_negative(c):
    tl_clt.features_at(c.graph, 1, k=-1)


def case_generate_top_k_negative(c):
    tl_clt.generate(c.model, c.clt, PROMPT, [], max_new_tokens=1, temperature=1.0, top_k=-1)


# ------------------------------------------------------------------------ scalars and containers
def case_prune_string_threshold(c):
    c.graph.prune("0.5")


def case_scalars_numpy_and_0d_tensors(c):
    a = c.graph.prune(np.float32(0.5), torch.tensor(0.9))
    assert torch.equal(a.node_mask, c.graph.prune(0.5, 0.9).node_mask)
    assert tl_clt.scale([_key(c)], np.float64(2.0), c.graph) == tl_clt.scale([_key(c)], 2.0, c.graph)


def case_group_number_members(c):
    c.graph.group({"x": 5})


def case_to_json_supernode_string(c):
    key = "F:{}:{}:{}".format(*_key(c))
    path = c.graph.to_json(c.tmp / "g.json", node_threshold=1.0, edge_threshold=1.0, supernodes={"g": key})
    import json

    groups = json.loads(path.read_text())["qParams"]["supernodes"]
    assert groups == [["g", f"{_key(c)[0]}_{_key(c)[2]}_{_key(c)[1]}"]], groups


def case_steer_none(c):
    tl_clt.steer(c.model, c.clt, PROMPT, None)


def case_steer_dict(c):
    tl_clt.steer(c.model, c.clt, PROMPT, {(0, 1, 0): 1.0})


def case_iv_empty_slice(c):
    tl_clt.steer(c.model, c.clt, PROMPT, [Intervention(0, slice(9, 2), 0, 1.0)])


def case_generate_tiny_temperature(c):
    greedy = tl_clt.generate(c.model, c.clt, PROMPT, [], max_new_tokens=2, return_type="tokens")
    tiny = tl_clt.generate(
        c.model, c.clt, PROMPT, [], max_new_tokens=2, temperature=1e-45, return_type="tokens"
    )
    assert torch.equal(greedy, tiny)


def case_generate_past_n_ctx(c):
    tl_clt.generate(c.model, c.clt, PROMPT, [], max_new_tokens=c.model.cfg.n_ctx)


# ------------------------------------------------------------------------ model state and modes
def case_split_qkv_model(c):
    model = copy.copy(c.model)  # shallow: a cfg of our own to change, the weights shared
    model.cfg = copy.copy(c.model.cfg)
    model.cfg.use_split_qkv_input = True
    tl_clt.attribute(model, c.clt, PROMPT, verbose=False)


def case_attribute_inference_mode(c):
    with torch.inference_mode():
        graph = tl_clt.attribute(c.model, c.clt, PROMPT, max_n_logits=3, verbose=False)
    assert torch.equal(graph.adjacency, c.graph.adjacency)


def case_report_one_token(c):
    report = tl_clt.reconstruction_report(c.model, c.clt, [5])
    assert all(math.isnan(f) for f in report.fvu) and "undefined" in report.note


def case_user_forward_hook(c):
    c.model.add_hook("blocks.0.hook_resid_mid", lambda t, hook: None)
    try:
        graph = tl_clt.attribute(c.model, c.clt, PROMPT, max_n_logits=3, verbose=False)
    finally:
        c.model.reset_hooks()
    # once, under its TransformerLens name (a bridge also lists that hook point as `blocks.0.ln2.hook_in`)
    assert graph.meta["user_hooks"] == ["blocks.0.hook_resid_mid"]


def case_user_backward_hook(c):
    c.model.add_hook("blocks.0.hook_resid_mid", lambda g, hook: None, dir="bwd")
    try:
        graph = tl_clt.attribute(c.model, c.clt, PROMPT, max_n_logits=3, verbose=False)
    finally:
        c.model.reset_hooks()
    assert graph.meta["user_backward_hooks"] == ["blocks.0.hook_resid_mid"]


# ------------------------------------------------------------------------ which model and CLT made a graph
def case_steer_graph_of_other_clt(c):
    tl_clt.steer(c.model, _other_clt(c), PROMPT, tl_clt.scale([_key(c)], 0.0, c.graph))


def case_group_interventions_other_clt(c):
    tl_clt.steer(c.model, _other_clt(c), PROMPT, tl_clt.group_interventions(c.graph, [_key(c)], 2.0))


def case_contrast_features_other_clt(c):
    tl_clt.contrast_features(c.model, _other_clt(c), c.graph, PROMPT)


def case_contrast_features_other_model_weights(c):
    model = copy.deepcopy(c.model)
    with torch.no_grad():
        model.W_E.mul_(2.0)
    tl_clt.contrast_features(model, c.clt, c.graph, PROMPT)


def case_sae_without_error_term(c):
    sae_lens = pytest.importorskip("sae_lens", reason="sae_lens is not installed (the saelens test extra)")
    model = sae_lens.HookedSAETransformer(c.model.cfg, move_to_device=False)
    model.load_state_dict(c.model.state_dict())
    model.tokenizer = c.model.tokenizer
    cfg = sae_lens.StandardSAEConfig(d_in=c.model.cfg.d_model, d_sae=32)
    cfg.metadata.hook_name = "blocks.1.hook_mlp_out"
    model.add_sae(sae_lens.StandardSAE(cfg), use_error_term=False)
    tl_clt.attribute(model, c.clt, PROMPT, verbose=False)


CASES = {name.removeprefix("case_"): fn for name, fn in dict(globals()).items() if name.startswith("case_")}
