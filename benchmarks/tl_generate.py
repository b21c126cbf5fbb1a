"""Steering hooks inside TransformerLens' own `model.generate`: agreement and time (issue 14, part 5).

On the shipped toy world, per backend, intervention spelling and `use_past_kv_cache`, greedy, N new tokens:
- *same tokens*: how many of the N new tokens equal `tl_clt.generate`'s with the same interventions;
- *max |Δlogit| hooks*: the largest difference between a step's logits and those of one non-cached forward
  over the whole generated sequence with the same hooks;
- *max |Δlogit| reference*: the same against `tests/test_steering.reference_steer` (the CLT read from its
  safetensors files, plain TL hooks, no tl_clt code), each intervention at the positions its `pos` means;
- seconds for TL's generate and for `tl_clt.generate` (best of 3, 1 torch thread).
The bridge's KV cache is passed on under the name it reads (`past_key_values`; transformers >= 5 calls it
`cache`), as `tests/test_tl_generate.py` does: without that its cached generate ignores the prompt.

    PYTHONPATH=. python benchmarks/tl_generate.py [--new 20] [--backends hooked,bridge]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import tl_clt  # noqa: E402
from tl_clt import Intervention  # noqa: E402
from tl_clt.toyworld import toyworld_paths  # noqa: E402

PROMPT = "Fact: The president of the United States in 2010 was"


def pass_bridge_cache_on() -> None:
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    update = AttentionBridge._update_kv_cache

    def update_with_cache(self, k, v, **kwargs):
        if kwargs.get("past_key_values") is None and kwargs.get("layer_past") is None:
            kwargs["past_key_values"] = kwargs.get("cache")
        return update(self, k, v, **kwargs)

    AttentionBridge._update_kv_cache = update_with_cache


def interventions(tokens, acts, where: str) -> list[Intervention]:
    last = len(tokens) - 1
    layer = 0 if where == "ablate" else 3
    features = acts[layer, last].nonzero().squeeze(-1).tolist()
    if where == "ablate":
        return tl_clt.ablate([(layer, last, f) for f in features])
    pos = {"pos=-1": -1, "slice": slice(last, None), "generated": "generated"}[where]
    return [Intervention(layer, pos, f, -3.0 * float(acts[layer, last, f])) for f in features]


def absolute(iv: Intervention, n_prompt: int, n_seq: int) -> list[int]:
    if iv.pos == "generated":
        return list(range(n_prompt, n_seq))
    if isinstance(iv.pos, int):
        return [iv.pos % n_prompt]
    return list(range(iv.pos.start % n_prompt, n_seq))


def tl_generate(model, hooks, tokens, use_past_kv_cache: bool, kw: dict):
    with model.hooks(fwd_hooks=hooks):
        return model.generate(
            tokens[None],
            do_sample=False,
            use_past_kv_cache=use_past_kv_cache,
            verbose=False,
            output_logits=True,
            **kw,
        )


def best(fn, repeats: int = 3):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", type=int, default=20)
    ap.add_argument("--backends", default="hooked,bridge")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    pass_bridge_cache_on()
    from test_steering import RawCLT, reference_steer

    model_dir, clt_dir = toyworld_paths()
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(clt_dir, dtype=torch.float32)
    raw = RawCLT(clt_dir, clt.n_layers)
    print(f"toy world, {args.new} new tokens, greedy")
    print(
        "| backend | interventions | KV cache | same tokens | max abs logit diff: same hooks, one pass "
        "| max abs logit diff: reference | TL generate s | tl_clt.generate s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for backend in args.backends.split(","):
        model = tl_clt.load_qwen3(model_dir, backend=backend)
        tokens = tl_clt.to_tokens(model, PROMPT)
        n = len(tokens)
        acts = tl_clt.feature_activations(model, clt, tokens).to_dense()
        for where in ("pos=-1", "slice", "generated", "ablate"):
            ivs = interventions(tokens, acts, where)
            kw = dict(max_new_tokens=args.new, stop_at_eos=False)
            want, t_ours = best(partial(tl_clt.generate, model, clt, tokens, ivs, **kw))
            hooks = tl_clt.steering_hooks(model, clt, ivs, tokens=tokens, freeze_attention=False)
            for cache in (False, True):
                out, t_tl = best(partial(tl_generate, model, hooks, tokens, cache, kw))
                got = out.sequences[0]
                steps = torch.stack([s[0] for s in out.logits])
                with torch.no_grad(), model.hooks(fwd_hooks=hooks):
                    full = model(got[None])[0, n - 1 : -1]
                ref = reference_steer(
                    model,
                    raw,
                    got,
                    [(iv.layer, absolute(iv, n, len(got)), iv.feature, iv.value) for iv in ivs],
                    False,
                )[n - 1 : -1]
                same = int((got[n:] == want[n:]).sum())
                print(
                    f"| {backend} | {where} | {cache} | {same}/{args.new} | {(steps - full).abs().max():.2e} "
                    f"| {(steps - ref).abs().max():.2e} | {t_tl:.2f} | {t_ours:.2f} |"
                )


if __name__ == "__main__":
    main()
