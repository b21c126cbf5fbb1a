"""The four groups of the seed's story, found on the toy world the way tutorial 01 describes: features
that need the office ("weather" instead of "president") or the year ("1985" instead of "2010"),
features at the last position whose decoder says names, and the rest. Written here, apart from the
tutorial, so that tests judge the tutorial and the pictures with their own groups."""

from __future__ import annotations

import tl_clt

PROMPT = "Fact: The president of the United States in 2010 was"
NO_OFFICE = "Fact: The weather of the United States in 2010 was"
OTHER_YEAR = "Fact: The president of the United States in 1985 was"
NAMES = ("President", "Year ~2010", "Say a political figure", "Events ~2010")


def president_groups(model, clt, graph, min_influence: float = 1e-3) -> dict[str, list[str]]:
    """{name: feature node ids} with no node in two groups."""
    influence = graph.node_influence()
    influential = {graph.node_id(i) for i in range(graph.n_features) if influence[i] > min_influence}
    office = {c.node for c in tl_clt.contrast_features(model, clt, graph, NO_OFFICE)} & influential
    year = {c.node for c in tl_clt.contrast_features(model, clt, graph, OTHER_YEAR)} & influential
    tokens, other = tl_clt.to_tokens(model, PROMPT), tl_clt.to_tokens(model, OTHER_YEAR)
    year_positions = {p for p in range(len(tokens)) if tokens[p] != other[p]}
    last = len(tokens) - 1

    def pos(node: str) -> int:
        return int(node.split(":")[2])

    def says_a_name(node: str) -> bool:
        layer, _, feature = map(int, node.split(":")[1:])
        toks = [t.token for t in tl_clt.feature_output_tokens(model, clt, layer, feature, k=5)]
        return sum(t.startswith(" ") and t[1:2].isupper() for t in toks) >= 4

    say = {n for n in office if pos(n) == last and says_a_name(n)}
    year_group = {n for n in year if pos(n) in year_positions}
    return {
        "President": sorted(office - year - say),
        "Year ~2010": sorted(year_group),
        "Say a political figure": sorted(say),
        "Events ~2010": sorted((office & year) - say - year_group),
    }
