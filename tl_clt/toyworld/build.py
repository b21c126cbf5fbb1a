"""Build the toy world from nothing: corpus -> tokenizer -> tiny Qwen3 -> activations -> CLT.

    python -m tl_clt.toyworld.build --out tl_clt/data/toyworld

writes `model/` (HF folder: config.json, model.safetensors, tokenizer files), `clt/` (BluelightAI
split format, bf16, with the feature dashboards in `clt/features/`, see `tl_clt.toyworld.dashboards`)
and `report.json` (accuracies, FVU/L0, story probabilities, timings). Seeded
and single-threaded by default, so a rebuild with the same arguments gives the same files.
It took 10-12 minutes on one core of a shared 2-core machine (598-721 s; a rebuild gave the same files).
The shipped world's options (the defaults, chosen with `benchmarks/story.py`'s validation prompts,
docs/supernodes.md): layer 0's attention output held at zero through training (`--silent-attention 0`:
its MLP reads each token alone, so the office and the year are computed on their own words instead of
read from their embeddings by attention), office sentences ending in an action, a quarter as many as
the facts (`--action-share 0.25`: a name follows an office only after " was"), no label smoothing, the
CLT's sparsity 3e-4 and training seed 6 (`--init-seed 6`: of seeds 0-9, the best on the validation
prompts, 9 of 10). Since session 21 the corpus has Spain's prime ministers where it had Spain's king;
the worlds before were trained with `--init-seed 0` on the corpus with the king: the last one with
these options, the one before it `--action-share 0 --label-smoothing 0.1`, the one before that (no
silent layer, sparsity 2e-4) `--silent-attention --action-share 0 --sparsity 2e-4`.
`--threads 1` is the default: with other jobs on the 2 cores, 2 threads ran about 10x slower.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path

import torch

from tl_clt import CrossLayerTranscoder, default_backend, files, load_qwen3, reconstruction_report
from tl_clt.toyworld.corpus import FACT_TEMPLATES, first_names, make_corpus, split_facts
from tl_clt.toyworld.dashboards import build_toyworld_dashboards
from tl_clt.toyworld.tokenizer import train_tokenizer
from tl_clt.toyworld.train_clt import collect_activations, export_clt, train_clt
from tl_clt.toyworld.train_model import (
    SMOOTHING_TO,
    fact_accuracy,
    next_token_probs,
    save_model,
    train_model,
)

MODEL_NAME = "toyworld/model"  # what the CLT's config.yaml names; matches load_qwen3(".../model")
STORY_PROMPTS = (
    "Fact: The president of the United States in 2010 was",
    "Fact: The president of the United States in 1985 was",
    "Fact: The president of the United States in 1995 was",
    "Fact: The president of the United States in 1975 was",
    "Fact: The president of the United States in 2020 was",
    "Fact: The weather of the United States in 2010 was",
    "Fact: The president in 2010 was",
)
REPORT_PROMPTS = STORY_PROMPTS[:1] + (
    "Fact: The prime minister of Canada in 1985 was Brian Mulroney.",
    "In 1962 the chancellor of Germany was Konrad Adenauer.",
    "Fact: The weather of France in 1977 was a big story.",
)


def top_tokens(model, prompt: str, k: int = 5) -> list[tuple[str, float]]:
    probs = next_token_probs(model, prompt)
    top = probs.topk(k)
    return [(model.tokenizer.decode([i]), round(float(p), 4)) for p, i in zip(*top, strict=True)]


def experiment_options(**given) -> dict:
    """The `build` options among `given` that differ from their defaults (recorded in report.json)."""
    defaults = inspect.signature(build).parameters
    return {k: list(v) if isinstance(v, tuple) else v for k, v in given.items() if v != defaults[k].default}


def build(
    out: Path,
    seed: int = 0,
    model_steps: int = 1500,
    clt_steps: int = 1000,
    n_features: int = 512,
    sparsity: float = 3e-4,
    silent_attention: tuple[int, ...] = (0,),
    action_share: float = 0.25,
    init_seed: int | None = 6,
    label_smoothing: float = 0.0,
    office_filler_share: float = 0.0,
    smoothing_to: str = "uniform",
    filler_share: float = 0.4,
) -> dict:
    """Run the whole pipeline into `out`; returns the report that is also saved as report.json. Needs
    transformer-lens 3.x: the shipped world was made on a HookedTransformer, and a rebuild with the
    defaults gives its files byte for byte only there."""
    if default_backend() != "hooked":
        raise RuntimeError(
            "Building the toy world needs transformer-lens 3.x (HookedTransformer): the shipped world was "
            "made with it, and a rebuild gives the same files only there. Install 'transformer-lens>=3,<4' "
            "in a venv to build; the shipped world itself loads on either (load_toyworld())."
        )
    options = experiment_options(**{k: v for k, v in locals().items() if k not in ("out", "seed")})
    timings, t0 = {}, time.time()
    train_seed = seed if init_seed is None else init_seed  # the model's and the CLT's training
    corpus = make_corpus(
        seed, filler_share=filler_share, action_share=action_share, office_filler_share=office_filler_share
    )
    tokenizer = train_tokenizer(corpus, first_names(), vocab_size=1024)
    print(f"corpus: {len(corpus)} sentences, vocab {len(tokenizer)}")

    print("training the model")
    hf_model = train_model(
        tokenizer,
        corpus,
        steps=model_steps,
        seed=train_seed,
        silent_attention=silent_attention,
        label_smoothing=label_smoothing,
        smoothing_to=smoothing_to,
    )
    save_model(hf_model, tokenizer, out / "model")
    timings["model_s"] = round(time.time() - t0)
    model = load_qwen3(out / "model", device="cpu")
    train_facts, held_out = split_facts(seed)
    accuracy = {
        "train_facts": fact_accuracy(model, train_facts),
        "held_out_facts": fact_accuracy(model, held_out),
        "held_out_by_template": {t: fact_accuracy(model, held_out, t) for t in FACT_TEMPLATES},
        "n_train_facts": len(train_facts),
        "n_held_out_facts": len(held_out),
    }
    print(json.dumps(accuracy, indent=1))

    print("training the CLT")
    t1 = time.time()
    mlp_in, mlp_out = collect_activations(model, corpus)
    clt, s_in, s_out = train_clt(
        mlp_in,
        mlp_out,
        n_features=n_features,
        steps=clt_steps,
        sparsity=sparsity,
        seed=train_seed,
    )
    export_clt(clt, s_in, s_out, out / "clt", MODEL_NAME)
    timings["clt_s"] = round(time.time() - t1)
    loaded = CrossLayerTranscoder.from_pretrained(out / "clt")
    t2 = time.time()
    build_toyworld_dashboards(model, loaded, out / "clt" / "features", seed=seed)
    timings["dashboards_s"] = round(time.time() - t2)
    recon = {p: vars(reconstruction_report(model, loaded, p)) for p in REPORT_PROMPTS}
    for p, r in recon.items():
        print(p, json.dumps(r))
    timings["total_s"] = round(time.time() - t0)
    report = {
        "seed": seed,
        **({"options": options} if options else {}),
        "n_tokens_clt": mlp_in.shape[1],
        "accuracy": accuracy,
        "story": {p: top_tokens(model, p) for p in STORY_PROMPTS},
        "reconstruction": recon,
        "timings": timings,
    }
    files.write_text(out / "report.json", json.dumps(report, indent=1))
    return report


# build's options that are one plain flag each: (type, help)
FLAGS = {
    "sparsity": (float, "the CLT's sparsity penalty"),
    "n_features": (int, "the CLT's features per layer"),
    "init_seed": (int, "seed of the model's and CLT's training only (the shipped world: 6)"),
    "action_share": (float, "office sentences ending in an action"),
    "label_smoothing": (float, "of the model's training loss"),
    "office_filler_share": (float, "office prompts ending in filler (experiment)"),
    "filler_share": (float, "plain-noun filler sentences' share of the corpus"),
}


def main() -> None:
    defaults = {k: p.default for k, p in inspect.signature(build).parameters.items()}
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tl_clt/data/toyworld"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--silent-attention",
        type=int,
        nargs="*",
        default=list(defaults["silent_attention"]),
        help="layers whose attention output is held at zero in training (the shipped world: 0)",
    )
    for name, (kind, text) in FLAGS.items():  # one flag per build option, its default build's own
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=kind, default=defaults[name], help=text)
    parser.add_argument(
        "--smoothing-to",
        choices=SMOOTHING_TO,
        default=defaults["smoothing_to"],
        help="where the label smoothing goes: every token, or the tokens that follow the current one",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    given = {k: v for k, v in vars(args).items() if k in defaults}  # `--threads` is not build's
    report = build(**given | {"silent_attention": tuple(args.silent_attention)})
    print(json.dumps(report["story"], indent=1))
    print(f"done in {report['timings']['total_s']} s")


if __name__ == "__main__":
    main()
