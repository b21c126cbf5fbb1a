"""The seed's story on prompts the tutorial never saw: automatic supernodes, measured on the toy world.

    PYTHONPATH=$PWD python benchmarks/story.py [--per-key 3] [--json out.json] [--world DIR] [--mechanism]
        [--prompts validation [--val-per-key 100]] [--push-cover 0.8] [--token-share 0.5] [--no-complete]
        [--min-size 2] [--min-influence 0.02] [--all-groups] [--mediate 20] [--factor -1.5]
        [--steer 'say a name=0']
        [--oracle [--oracle-steps 12] [--oracle-min-layer 1]]

(`--world`: a toy world built elsewhere, `python -m tl_clt.toyworld.build --out DIR`; default the
shipped one. `--push-cover`, `--token-share`, `--no-complete`, `--min-size`, `--min-influence`,
`--all-groups`, `--mediate`: `propose_supernodes`' options; default its defaults. `--factor`: every role
steered by this factor instead of the story's `STEERING`; the year's ablation beside it stays x0.
`--steer ROLE=F`: that role by F, after `--factor`.)

For the seed's prompt and every held-out prompt (`tl_clt.toyworld.story.held_out_prompts`): check
the model answers right, attribute, prune (0.8, 0.98), `propose_supernodes` (`unpruned=` the graph), find
the groups that play the seed's four roles by their names, steer each whole (`proposals.whole`: members and
the features pruning left out where it sits) with attention frozen and check its effect
(year / era steered down, x-1 -> another holder of the office; office / "say a name" steered
down -> filler). Prints one row per prompt and role, the fraction of prompts where every effect
holds (over all held-out prompts, and apart for those whose holder the corpus reaches through an event
of the prompt's year, `tl_clt.toyworld.story.event_reachable`, and the others), the same with the year
group ablated instead, as in the seed (the issue allows either), and the purity of the proposed
groups against the corpus-defined feature labels (`tl_clt.toyworld.labels`), of what is steered and of the
pruned graph's members.

`--prompts validation`: other held-out facts (`tl_clt.toyworld.story.validation_prompts`), to choose
between worlds or rules without looking at the test prompts: 2 per office (10 prompts) by default,
`--val-per-key 100` all 22 that no test prompt uses.

`--mechanism` (instead of the proposals): where each prompt's name-or-filler decision is carried,
measured without any grouping. Per prompt: p(names) / p(filler) clean; with every CLT feature on the
office's words ablated and steered x-1 (attention frozen); with the model's own MLP outputs there
zeroed (no CLT); with the office words' embeddings replaced by a plain noun's (the control: the
decision is read from those positions); with every feature on the last word ablated; and the most
attention a layer-0 head pays from the last word to an office word. Then the ceilings of the story's
effects with the prompt's own features: every CLT feature on the office's words x-1 (an office group
cannot hold more: filler up, names down, as `story_effects` reads it), and every feature on the year's
tokens x-1 and ablated (a year or era group cannot hold more: the holder named after it, `top_holder`,
is another one).

`--oracle` (instead of the proposals): how far a group on the last word *could* go with the strict
reading of "say a name", found by brute force knowing the answer. Per prompt, a greedy search over the
CLT features active on the last word (`oracle_row`): at each step the feature that, added to those
chosen and all steered x-1 with attention frozen, most raises the margin (log p of the best filler word
minus log p of the best other token), until no feature raises it or `--oracle-steps` are chosen
(`--oracle-min-layer L`: only features of layer L and up, e.g. 1 to leave out layer 0's: on the last
word they are the same five features at the same activations on every prompt, the token " was"). It
prints the margin, the top token, p(filler words) and p(names) after, and how many of the chosen
features the proposed "say a name" group (whole) holds. The search knows the filler words, which a
proposal cannot: it bounds what the world allows, it is not a way to find the group. Each step's
steerings run 16 to a forward pass (`Steerer.last`, ties: the larger node id, as before batching): the
22 prompts take ~36 s, with the same choices as one steering per pass (7.5 min).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import replace

import torch
from tqdm import tqdm

import tl_clt
from tl_clt.prompts import to_tokens
from tl_clt.proposals import decoder_directions, logit_readout, word_spans, word_texts
from tl_clt.steering import Intervention, Steerer, scale
from tl_clt.toyworld import load_toyworld
from tl_clt.toyworld.corpus import NOUNS, first_names
from tl_clt.toyworld.labels import feature_labels
from tl_clt.toyworld.story import (
    FILLER_WORDS,
    ROLES,
    SEED,
    filler_effect_holds,
    held_out_prompts,
    reaching_events,
    story_effects,
    story_roles,
    token_ids,
    top_holder,
    validation_prompts,
)

EXPECTED_LABEL = {"year": "year", "era": "era", "say a name": "office", "office": "office"}


def purity(members: list[str], labels) -> tuple[str, float, Counter]:
    """(majority label, its share, label counts) of a group."""
    counts = Counter(labels[m] for m in members)
    label, n = counts.most_common(1)[0]
    return label, n / len(members), counts


def _members_only(proposals):
    """The proposals without their pruned-out features (`whole(name)` = the pruned graph's members)."""
    info = {n: replace(i, pruned_out=[]) for n, i in proposals.info.items()}
    return type(proposals)(dict(proposals), info, proposals.signals)


def run_prompt(
    model, clt, sp, labels, options: dict, factor: float | None = None, steer: dict | None = None
) -> dict:
    t0 = time.time()
    graph = tl_clt.attribute(model, clt, sp.prompt, verbose=False)
    pruned = graph.prune(0.8, 0.98)
    proposals = tl_clt.propose_supernodes(pruned, model=model, clt=clt, unpruned=graph, **options)
    roles = story_roles(proposals, sp)
    steering = {} if factor is None else dict.fromkeys(ROLES, factor)  # every role by one factor
    steering |= steer or {}
    result = story_effects(model, clt, sp, graph, roles, steering=steering)
    ablated = story_effects(model, clt, sp, graph, {"year": roles["year"]}, steering={"year": 0.0})
    groups = {}
    for name, members in proposals.items():
        label, share, counts = purity(members, labels)
        groups[name] = dict(kind=proposals.info[name].kind, n=len(members), majority=label, purity=share,
                            labels=dict(counts))  # fmt: skip
    role_purity, members_purity = {}, {}
    for role, members in roles.items():
        if members:
            role_purity[role] = sum(labels[m] == EXPECTED_LABEL[role] for m in members) / len(members)
    for role, members in story_roles(_members_only(proposals), sp).items():
        if members:
            members_purity[role] = sum(labels[m] == EXPECTED_LABEL[role] for m in members) / len(members)
    return dict(
        prompt=sp.prompt,
        answer=sp.answer,
        events=list(reaching_events(sp)),
        top=result.top,
        answered=result.answered,
        holds=result.holds,
        year_ablated=vars(ablated.effects["year"]) if "year" in ablated.effects else None,
        holds_year_ablated=replace(result, effects={**result.effects, **ablated.effects}).holds,
        effects={r: vars(e) for r, e in result.effects.items()},
        missing=[r for r in ROLES if r not in result.effects],
        groups=groups,
        role_purity=role_purity,
        members_purity=members_purity,
        seconds=round(time.time() - t0, 1),
    )


def report(rows: list[dict]) -> None:
    print(f"\n{'prompt':58s} {'role':10s} {'n':>3s} {'x':>4s}  {'top before -> after':26s} "
          f"{'p(names)':>15s} {'p(filler)':>15s} holds")  # fmt: skip
    for r in rows:
        for role in ROLES:
            e = r["effects"].get(role)
            if e is None:
                print(f"{r['prompt'][:58]:58s} {role:10s}  -- no group proposed")
                continue
            change = f"{e['top_before']!r} -> {e['top_after']!r}"
            print(
                f"{r['prompt'][:58]:58s} {role:10s} {e['n_features']:3d} {e['factor']:+4.0f}  {change:26s} "
                f"{e['p_names'][0]:.2f} -> {e['p_names'][1]:.2f}   "
                f"{e['p_filler'][0]:.2f} -> {e['p_filler'][1]:.2f}   {'yes' if e['holds'] else 'NO'}"
                + (f"  ({e['holder_after']})" if e.get("holder_after") else "")
            )
    held = [r for r in rows[1:]]
    print(f"\nseed prompt: every effect holds: {rows[0]['holds']} "
          f"(year ablated instead, as in the seed: {rows[0]['holds_year_ablated']})")  # fmt: skip
    reach = [r for r in held if r["events"]]
    subsets = (
        ("held-out prompts", held),
        ("  event-reachable (an event of the year leads to the holder in the corpus)", reach),
        ("  not event-reachable", [r for r in held if not r["events"]]),
    )
    for title, subset in subsets:
        n = len(subset)
        print(f"{title}: answered right {sum(r['answered'] for r in subset)}/{n}, "
              f"every effect holds {sum(r['holds'] for r in subset)}/{n}")  # fmt: skip
        for role in ROLES:
            ok = [r["effects"][role]["holds"] for r in subset if role in r["effects"]]
            print(f"  {role:10s}: group proposed {len(ok)}/{n}, effect holds {sum(ok)}/{n}")
        ablated = sum(bool(r["year_ablated"] and r["year_ablated"]["holds"]) for r in subset)
        print(f"  year ablated instead (as in the seed): effect holds {ablated}/{n}, "
              f"every effect holds {sum(r['holds_year_ablated'] for r in subset)}/{n}")  # fmt: skip
    print("\npurity (share of a role's features whose corpus label is the expected one), mean over prompts:")
    for role in ROLES:
        vals = [r["role_purity"][role] for r in rows if role in r["role_purity"]]
        own = [r["members_purity"][role] for r in rows if role in r["members_purity"]]
        if vals:
            whole, members = sum(vals) / len(vals), sum(own) / len(own)
            print(f"  {role:10s} (expected {EXPECTED_LABEL[role]!r}): {whole:.2f} steered whole, "
                  f"{members:.2f} the pruned graph's members, over {len(vals)} prompts")  # fmt: skip
    n = sum(g["n"] for r in rows for g in r["groups"].values())
    maj = sum(g["n"] * g["purity"] for r in rows for g in r["groups"].values())
    print(
        f"  all proposed groups, majority-label purity (member-weighted): {maj / max(1, n):.2f} "
        f"over {n} features"
    )
    sizes = sorted(len(r["groups"]) for r in rows)
    print(f"  groups per prompt: {sum(sizes) / len(sizes):.1f} on average ({sizes[0]}-{sizes[-1]})")
    strict_report(rows[0], held)


def strict_report(seed: dict, held: list[dict]) -> None:
    """The office / "say a name" effects read strictly: a filler word is the top answer after the steering
    (not only filler up 5x and names below it), and every effect at once with that reading."""

    def strict(r: dict, role: str) -> bool:
        e = r["effects"].get(role)
        return bool(e and e["holds"] and e["top_is_filler"])

    n = len(held)
    print("\nstricter reading: a filler word on top after the office / say a name steering")
    for role in ("office", "say a name"):
        ok = [r for r in held if strict(r, role)]
        missed = [r for r in held if role in r["effects"] and not strict(r, role)]
        tops = Counter(r["effects"][role]["top_after"] for r in missed)
        pf = sorted(r["effects"][role]["p_filler"][1] for r in held if role in r["effects"])
        median = pf[len(pf) // 2] if pf else float("nan")
        print(f"  {role:10s}: {len(ok)}/{n} (median p(filler words) after {median:.3f}; "
              f"on top otherwise: {dict(tops.most_common(6))})")  # fmt: skip
    every = sum(r["holds"] and strict(r, "office") and strict(r, "say a name") for r in held)
    seed_ok = seed["holds"] and strict(seed, "office") and strict(seed, "say a name")
    print(f"  every effect at once, read so: {every}/{n}; the seed's prompt: {seed_ok}")


def p_names_filler(model, logits) -> tuple[float, float, str]:
    """p(names), p(filler words) and the top token at the last position of [pos, vocab] logits."""
    p = logits[-1].softmax(-1)
    names, filler = token_ids(model, first_names()), token_ids(model, FILLER_WORDS)
    return float(p[names].sum()), float(p[filler].sum()), model.tokenizer.decode([int(p.argmax())])


def mechanism_row(model, clt, sp) -> dict:
    """Where the prompt's name-or-filler decision is carried (module docstring, `--mechanism`)."""
    tokens = to_tokens(model, sp.prompt)
    words_raw = [model.tokenizer.decode([int(t)]) for t in tokens]
    words = [w.strip() for w in words_raw]
    spans = word_spans(words_raw)
    texts = word_texts(words_raw, spans)
    office = [i for i, w in enumerate(words) if w in sp.office_words]
    last = len(tokens) - 1
    acts = tl_clt.feature_activations(model, clt, sp.prompt).coalesce()
    keys, values = acts.indices().T.tolist(), acts.values().tolist()

    def steered(positions, factor):
        ivs = [
            Intervention(layer, pos, f, factor * v)
            for (layer, pos, f), v in zip(keys, values, strict=True)
            if pos in positions
        ]
        return p_names_filler(model, tl_clt.steer(model, clt, sp.prompt, ivs))

    def hooked(name, fn):
        hooks = [(f"blocks.{layer}.{name}", fn) for layer in range(model.cfg.n_layers)]
        return p_names_filler(model, model.run_with_hooks(tokens[None], fwd_hooks=hooks)[0])

    def zero_mlp(x, hook):
        x[:, office] = 0
        return x

    noun = int(token_ids(model, [" " + NOUNS[0]])[0])

    def noun_embedding(x, hook):
        x[:, office] = model.W_E[noun]
        return x

    year = [i for i, w in enumerate(spans) if texts[w].strip().isdigit()]  # the year's tokens

    def year_ceiling(factor):
        ivs = [Intervention(layer, pos, f, factor * v)
               for (layer, pos, f), v in zip(keys, values, strict=True) if pos in year]  # fmt: skip
        after = tl_clt.steer(model, clt, sp.prompt, ivs)[-1].softmax(-1)
        return top_holder(model, clt, sp, ivs, after)

    # the last word's features' summed direct effect on the (de-meaned) logits: the tokens it lowers most
    on_last = [(i, (layer, f)) for i, (layer, pos, f) in enumerate(keys) if pos == last]
    effect = torch.tensor([values[i] for i, _ in on_last]) @ (
        decoder_directions(clt, [k for _, k in on_last]) @ logit_readout(model)
    )
    lowered = [model.tokenizer.decode([int(t)]) for t in effect.argsort()[:30]]

    _, cache = model.run_with_cache(tokens[None], names_filter="blocks.0.attn.hook_pattern")
    attention = cache["blocks.0.attn.hook_pattern"][0, :, last, office].max()
    embed = p_names_filler(
        model, model.run_with_hooks(tokens[None], fwd_hooks=[("hook_embed", noun_embedding)])[0]
    )
    return dict(
        prompt=sp.prompt,
        holder=sp.fact.name,
        n_office_features=sum(p in office for _, p, _ in keys),
        clean=p_names_filler(model, model(tokens[None])[0]),
        office_features_x0=steered(office, 0.0),
        office_features_x_1=steered(office, -1.0),
        office_mlp_zeroed=hooked("hook_mlp_out", zero_mlp),
        office_embedding_noun=embed,
        last_features_x0=steered([last], 0.0),
        last_features_x_1=steered([last], -1.0),
        layer0_attention=float(attention),
        last_lowers_digits=sum(t.strip().isdigit() for t in lowered),  # of the 30 lowered most
        last_lowers=lowered,
        year_features_x_1=year_ceiling(-1.0),
        year_features_x0=year_ceiling(0.0),
    )


def oracle_row(model, clt, sp, steps: int = 12, factor: float = -1.0, min_layer: int = 0) -> dict:
    """Greedy search over the last word's active features (of layers `min_layer` and up) for the set
    that, steered by `factor` (attention frozen), puts a filler word on top by the widest margin (module
    docstring, `--oracle`)."""
    graph = tl_clt.attribute(model, clt, sp.prompt, verbose=False)
    last = graph.n_pos - 1
    filler = torch.tensor(token_ids(model, FILLER_WORDS))
    keys = graph.feature_keys.tolist()
    candidates = [graph.node_id(i) for i, k in enumerate(keys) if k[1] == last and k[0] >= min_layer]
    steer = Steerer(model, clt, sp.prompt)  # one clean pass and KV cache for every steering
    scaled = dict(zip(candidates, scale(candidates, factor, graph), strict=True))  # activations read once

    def margins_of(node_sets: list[list[str]]) -> list[float]:
        logp = steer.last([[scaled[n] for n in nodes] for nodes in node_sets]).log_softmax(-1)
        other = logp.clone()
        other[:, filler] = -torch.inf
        return (logp[:, filler].max(-1).values - other.max(-1).values).tolist()

    chosen, margins = [], margins_of([[]])
    while len(chosen) < steps:
        rest = [c for c in candidates if c not in chosen]
        best, node = max(zip(margins_of([chosen + [c] for c in rest]), rest))
        if best <= margins[-1]:
            break
        chosen.append(node)
        margins.append(best)
    p_names, p_filler, top = p_names_filler(model, steer(scale(chosen, factor, graph)))
    clean_names, clean_filler, _ = p_names_filler(model, model(to_tokens(model, sp.prompt)[None])[0])
    proposals = tl_clt.propose_supernodes(graph.prune(0.8, 0.98), model=model, clt=clt, unpruned=graph)
    say = set(story_roles(proposals, sp)["say a name"])
    return dict(
        prompt=sp.prompt, n_candidates=len(candidates), chosen=chosen, margins=margins, top=top,
        top_is_filler=top in FILLER_WORDS, p_names=p_names, p_filler=p_filler,
        holds=filler_effect_holds((clean_names, p_names), (clean_filler, p_filler)),
        in_say_a_name=sum(c in say for c in chosen), say_a_name_size=len(say),
    )  # fmt: skip


def oracle_report(rows: list[dict]) -> None:
    print(f"\n{'prompt':52s} {'cands':>5s} {'chosen':>6s} {'in say':>6s} {'margin':>7s} {'top':>10s} "
          f"{'p(filler)':>9s} {'p(names)':>8s}")  # fmt: skip
    for r in rows:
        n, say, m = len(r["chosen"]), r["in_say_a_name"], r["margins"][-1]
        print(f"{r['prompt'][:52]:52s} {r['n_candidates']:5d} {n:6d} {say:6d} {m:+7.2f} "
              f"{r['top']!r:>10s} {r['p_filler']:9.2f} {r['p_names']:8.2f}")  # fmt: skip
    held = rows[1:]
    on_top = sum(r["top_is_filler"] for r in held)
    both = sum(r["top_is_filler"] and r["holds"] for r in held)
    chosen, say = sum(len(r["chosen"]) for r in held), sum(r["in_say_a_name"] for r in held)
    print(f"held-out prompts: a filler word on top after the search on {on_top}/{len(held)} "
          f"(seed's prompt: {rows[0]['top_is_filler']}); {chosen} features chosen, {say} of them in the "
          "proposed 'say a name' group (whole)")  # fmt: skip
    print(f"  on top, and by the 5x test too (filler up 5x, names halved and below it): {both}/{len(held)}")


def mechanism_report(rows: list[dict]) -> None:
    cols = ("clean", "office_features_x0", "office_features_x_1", "office_mlp_zeroed",
            "office_embedding_noun", "last_features_x0", "last_features_x_1")  # fmt: skip
    print(
        "\np(names) / p(filler) / top after each change; "
        "'attn': most layer-0 attention from the last word to the office"
    )
    print(f"{'prompt':52s} {'feats':>5s} " + " ".join(f"{c:>24s}" for c in cols) + "  attn")
    for r in rows:
        cells = " ".join(f"{r[c][0]:4.2f}/{r[c][1]:4.2f} {r[c][2]!r:>13s}" for c in cols)
        print(f"{r['prompt'][:52]:52s} {r['n_office_features']:5d} {cells}  {r['layer0_attention']:.2f}")
    n = len(rows)
    for c in cols[1:]:
        kept = sum(r[c][0] >= 0.5 for r in rows)
        filler = sum(r[c][1] > r[c][0] for r in rows)
        top = sum(r[c][2] in FILLER_WORDS for r in rows)
        print(f"  {c:24s}: names still >= 0.5 on {kept}/{n}, filler above names on {filler}/{n}, "
              f"a filler word on top on {top}/{n}")  # fmt: skip
    digits = sorted(r["last_lowers_digits"] for r in rows)
    print(f"  the last word's features, summed: digits among the 30 tokens they lower most: "
          f"{digits[0]}-{digits[-1]} (median {digits[n // 2]}); the seed's prompt: "
          f"{rows[0]['last_lowers'][:12]}")  # fmt: skip
    print("\nceilings: what a group on the office's words / on the year's tokens could do at most")
    office_ok = []
    for r in rows:
        (n0, f0, _), (n1, f1, _) = r["clean"], r["office_features_x_1"]
        office_ok.append(filler_effect_holds((n0, n1), (f0, f1)))
    year_ok = [
        any(r[c] is not None and r[c] != r["holder"] for c in ("year_features_x_1", "year_features_x0"))
        for r in rows
    ]
    for r, o, y in zip(rows, office_ok, year_ok, strict=True):
        if not (o and y):
            print(f"  {r['prompt'][:52]:52s} office words x-1: {'holds' if o else 'does not hold'}; "
                  f"year tokens x-1 / x0 -> {r['year_features_x_1']} / {r['year_features_x0']}"
                  f" ({'another holder' if y else 'the same holder'})")  # fmt: skip
    print(f"  office effect reachable on {sum(office_ok)}/{n}, year effect on {sum(year_ok)}/{n}, "
          f"both on {sum(o and y for o, y in zip(office_ok, year_ok, strict=True))}/{n}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-key", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--world", default=None, help="folder of a toy world (default: the shipped one)")
    ap.add_argument("--mechanism", action="store_true", help="where the decision is carried (no proposals)")
    ap.add_argument("--oracle", action="store_true", help="greedy search for 'say a name' read strictly")
    ap.add_argument("--oracle-steps", type=int, default=12, help="--oracle: most features chosen")
    ap.add_argument("--oracle-min-layer", type=int, default=0, help="--oracle: features of this layer and up")
    ap.add_argument(
        "--prompts",
        choices=("test", "validation"),
        default="test",
        help="the held-out test prompts, or the validation ones (to choose worlds or rules on)",
    )
    ap.add_argument(
        "--val-per-key", type=int, default=2,
        help="--prompts validation: facts per office (default 2: 10 prompts; 100: all 22 left)",
    )  # fmt: skip
    ap.add_argument("--token-share", type=float, default=None, help="proposals' token_share (0: off)")
    ap.add_argument("--push-cover", type=float, default=None, help="proposals' push_cover (0: off)")
    ap.add_argument("--no-complete", action="store_true", help="proposals: complete=False")
    ap.add_argument("--min-size", type=int, default=None, help="proposals' min_size")
    ap.add_argument("--min-influence", type=float, default=None, help="proposals' min_influence")
    ap.add_argument("--all-groups", action="store_true", help="proposals: max_groups=None (no cap)")
    ap.add_argument("--mediate", type=int, default=None, help="proposals' mediate (0: off)")
    ap.add_argument(
        "--factor", type=float, default=None, help="every role steered by this factor (default: the story's)"
    )
    ap.add_argument(
        "--steer", action="append", default=[], metavar="ROLE=F",
        help="one role steered by F (after --factor; repeatable), e.g. 'say a name=0'",
    )  # fmt: skip
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model, clt = load_toyworld(root=args.world)
    prompts = [SEED] + (
        held_out_prompts(args.per_key)
        if args.prompts == "test"
        else validation_prompts(args.val_per_key, test_per_key=args.per_key)
    )
    if args.oracle:
        rows = [
            oracle_row(model, clt, sp, args.oracle_steps, min_layer=args.oracle_min_layer)
            for sp in tqdm(prompts, desc="prompts")
        ]
        oracle_report(rows)
    elif args.mechanism:
        rows = [mechanism_row(model, clt, sp) for sp in tqdm(prompts, desc="prompts")]
    else:
        t0 = time.time()
        labels = feature_labels(model, clt)
        print(f"feature labels from the corpus ({time.time() - t0:.0f} s): {labels.counts()}")
        given = {"push_cover": args.push_cover, "token_share": args.token_share}
        given["complete"] = False if args.no_complete else None
        given |= {"min_size": args.min_size, "min_influence": args.min_influence, "mediate": args.mediate}
        options = {k: v for k, v in given.items() if v is not None}
        if args.all_groups:
            options["max_groups"] = None
        print(f"propose_supernodes options: {options or 'the defaults'}")
        steer = {}
        for item in args.steer:
            role, _, f = item.rpartition("=")
            if role not in ROLES:
                ap.error(f"--steer {item!r}: the role must be one of {ROLES}")
            steer[role] = float(f)
        print(f"steering: every role x{args.factor}" if args.factor is not None else "steering: the story's",
              f"and {steer}" if steer else "")  # fmt: skip
        rows = [
            run_prompt(model, clt, sp, labels, options, args.factor, steer)
            for sp in tqdm(prompts, desc="prompts")
        ]
    if not args.oracle:
        (mechanism_report if args.mechanism else report)(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
