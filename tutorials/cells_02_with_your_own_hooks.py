"""Cells of tutorials/02_with_your_own_hooks.ipynb (built by build_notebooks.py)."""

CELLS = [
    (
        "md",
        """
# tl_clt with your own TransformerLens analysis

tl_clt is a guest on the `HookedTransformer` you already have: everything it does is a list of ordinary
forward hooks or a function that adds hooks only for the length of one call. This notebook mixes it with
the usual TransformerLens workflow on **the same model object**: `run_with_cache`, a hand-written hook,
activation patching, and then patching *CLT features* instead of residual streams.

It runs on the toy world that ships with tl_clt (a tiny Qwen3 trained on dated facts, and a CLT trained
on it). Set `USE_REAL_WEIGHTS = True` to use Qwen3-1.7B-Base and BluelightAI's CLT if you have them.
""",
    ),
    (
        "code",
        """
%matplotlib inline
import json

import torch

import tl_clt

USE_REAL_WEIGHTS = False
if USE_REAL_WEIGHTS:
    model = tl_clt.load_qwen3("Qwen/Qwen3-1.7B-Base")
    clt = tl_clt.CrossLayerTranscoder.from_pretrained("bluelightai/clt-qwen3-1.7b-base-20k")
else:
    from tl_clt.toyworld import load_toyworld
    model, clt = load_toyworld()
torch.set_grad_enabled(False)
results = {}
""",
    ),
    ("md", "## 1. Your usual analysis: `run_with_cache`"),
    (
        "code",
        """
prompt = "Fact: The president of the United States in 2010 was"
corrupt = "Fact: The president of the United States in 1985 was"
tokens = tl_clt.to_tokens(model, prompt)          # <|endoftext|> is put in front (Qwen3 has no BOS)
corrupt_tokens = tl_clt.to_tokens(model, corrupt)
assert len(tokens) == len(corrupt_tokens)
logits, cache = model.run_with_cache(tokens[None])
answer = logits[0, -1].argmax().item()
corrupt_logits = model(corrupt_tokens[None])
corrupt_answer = corrupt_logits[0, -1].argmax().item()
print("clean  :", repr(model.tokenizer.decode(answer)), f"p={logits[0, -1].softmax(-1)[answer]:.2f}")
print("corrupt:", repr(model.tokenizer.decode(corrupt_answer)))
print(len(cache), "activations cached, e.g.", list(cache.keys())[:4])
""",
    ),
    (
        "md",
        """
## 2. The CLT inside `run_with_cache`

`replacement_hooks` returns `(hook_name, fn)` pairs. With `use_error_term=True` every MLP output is the
CLT reconstruction plus the (detached) error, so the numbers are unchanged and your cache is the model's
own; without it, the MLPs are replaced and `reconstruction_report` tells you how much that costs.
""",
    ),
    (
        "code",
        """
with model.hooks(fwd_hooks=tl_clt.replacement_hooks(model, clt, use_error_term=True)):
    logits_err, cache_err = model.run_with_cache(tokens[None])
diff = (logits_err - logits).abs().max().item()
print(f"max |logit difference| with the error term: {diff:.2e}")
with model.hooks(fwd_hooks=tl_clt.replacement_hooks(model, clt)):
    replaced = model(tokens[None])
print("replacement model predicts:", repr(model.tokenizer.decode(replaced[0, -1].argmax())))
print(tl_clt.reconstruction_report(model, clt, prompt))
results["error_term_max_diff"] = diff
""",
    ),
    (
        "md",
        """
## 3. Your own hook and a steering hook in one call

Hooks compose: here a hand-written hook that zeroes one attention head runs together with tl_clt's
steering hooks that ablate the feature most active at the last position.
""",
    ),
    (
        "code",
        """
acts = tl_clt.feature_activations(model, clt, tokens).to_dense()   # [layer, pos, feature]
layer, feature = divmod(acts[:, -1].argmax().item(), clt.n_features)
print(f"most active feature at the last position: layer {layer}, feature {feature}, "
      f"activation {acts[layer, -1, feature]:.2f}")

def zero_head(z, *, hook, head=0):
    z[:, :, head] = 0.0
    return z

mine = [(f"blocks.{model.cfg.n_layers - 1}.attn.hook_z", zero_head)]
ablate = tl_clt.steering_hooks(model, clt, [tl_clt.Intervention(layer, -1, feature, 0.0)], tokens=tokens)
runs = {}
for name, hooks in {"clean": [], "head off": mine, "feature off": ablate, "both": mine + ablate}.items():
    with model.hooks(fwd_hooks=hooks):
        runs[name] = model(tokens[None])[0]
    print(f"{name:12s}", repr(model.tokenizer.decode(runs[name][-1].argmax())),
          f"p(clean answer)={runs[name][-1].softmax(-1)[answer]:.3f}")
print(tl_clt.prediction_table(model, runs["clean"], runs["both"], k=5))
""",
    ),
    (
        "md",
        """
## 4. Activation patching, as usual

Copy the residual stream of the corrupted prompt ("1985") into the clean run, one (layer, position) at a
time, and measure how far the logit difference `clean answer - corrupt answer` moves toward the corrupted
run's. Position and layer where it moves most carry the year.
""",
    ),
    (
        "code",
        """
_, corrupt_cache = model.run_with_cache(corrupt_tokens[None])

def logit_diff(lg):
    return (lg[0, -1, answer] - lg[0, -1, corrupt_answer]).item()

clean_diff, corrupt_diff = logit_diff(logits), logit_diff(corrupt_logits)
n_layers, n_pos = model.cfg.n_layers, len(tokens)
effect = torch.zeros(n_layers, n_pos)
for L in range(n_layers):
    for p in range(n_pos):
        def patch(resid, *, hook, p=p):
            resid[:, p] = corrupt_cache[hook.name][:, p]
            return resid
        patched = model.run_with_hooks(tokens[None], fwd_hooks=[(f"blocks.{L}.hook_resid_pre", patch)])
        effect[L, p] = (clean_diff - logit_diff(patched)) / (clean_diff - corrupt_diff)
labels = [model.tokenizer.decode(t) for t in tokens]
best = divmod(effect.argmax().item(), n_pos)
print("largest share moved: layer", best[0], "position", best[1], repr(labels[best[1]]))
year_positions = [p for p in range(n_pos) if tokens[p] != corrupt_tokens[p]]
print("positions where the prompts differ:", year_positions, [labels[p] for p in year_positions])
results["patching_best_position"] = best[1]
results["year_positions"] = year_positions
""",
    ),
    (
        "code",
        """
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(8, 2.5))
im = ax.imshow(effect, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
ax.set_xticks(range(n_pos), labels, rotation=60, fontsize=7)
ax.set_ylabel("layer (resid_pre)")
fig.colorbar(im, ax=ax, label="share of effect")
plt.show()
""",
    ),
    (
        "md",
        """
## 5. Patching CLT features instead of residual streams

The same experiment in the CLT's basis: give the clean run the corrupted run's activations of the features
that are active at the year positions (an `Intervention` sets a feature's absolute activation). If the
year lives in those features, the prediction follows the corrupted year.
""",
    ),
    (
        "code",
        """
corrupt_acts = tl_clt.feature_activations(model, clt, corrupt_tokens).to_dense()
patches = []
for p in year_positions:
    for L in range(clt.n_layers):
        changed = ((acts[L, p] != 0) | (corrupt_acts[L, p] != 0)).nonzero().flatten().tolist()
        patches += [tl_clt.Intervention(L, p, f, float(corrupt_acts[L, p, f])) for f in changed]
patched = tl_clt.steer(model, clt, tokens, patches, freeze_attention=False)
moved = (clean_diff - logit_diff(patched[None])) / (clean_diff - corrupt_diff)
print(f"{len(patches)} feature activations patched at the year positions")
print("prediction after patching features:", repr(model.tokenizer.decode(patched[-1].argmax())))
print(f"share of the logit difference moved: {moved:.2f}")
print(tl_clt.prediction_table(model, logits, patched, k=5))
results["feature_patch_moved"] = moved
results["feature_patch_prediction"] = model.tokenizer.decode(patched[-1].argmax())
results["corrupt_prediction"] = model.tokenizer.decode(corrupt_answer)
""",
    ),
    (
        "md",
        """
## 6. The model is as it was

No hook of tl_clt's is left on the model, and it gives the same logits as at the start.
""",
    ),
    (
        "code",
        """
left = sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_dict.values())
same = torch.equal(model(tokens[None]), logits)
print("hooks left on the model:", left, "| same logits as at the start:", same)
results["hooks_left"] = left
results["same_logits"] = same
print("TUTORIAL_RESULTS", json.dumps(results))
""",
    ),
]
