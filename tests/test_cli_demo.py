"""`tl-clt demo`: the main job on the shipped toy world, offline, with and without proposed groups."""

from __future__ import annotations

import json
import re

import pytest
from president_groups import president_groups

import tl_clt
from tl_clt import export
from tl_clt.cli import main


def test_demo_without_proposals_writes_the_graph_and_its_picture(tmp_path, capsys, monkeypatch):
    monkeypatch.delattr(tl_clt, "propose_supernodes", raising=False)
    assert main(["demo", "-o", str(tmp_path / "out"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "prediction: ' Barack'" in out and "groups: none" in out
    data = json.loads((tmp_path / "out" / "graph.json").read_text())
    export.validate_graph_json(data)
    assert data["metadata"]["prompt"] == "Fact: The president of the United States in 2010 was"
    assert (tmp_path / "out" / "graph.png").read_bytes()[:4] == b"\x89PNG"


def test_demo_uses_propose_supernodes_when_there_is_one(tmp_path, capsys, monkeypatch):
    """With a proposer (here the tests' own recipe, standing in for tl_clt.propose_supernodes), the demo
    prints the groups and a steering table whose numbers match tl_clt.steer, and draws the circuit."""
    seen = {}

    def propose(graph, *, model, clt, unpruned=None):
        if unpruned is not None:  # the demo's call: the pruned graph and the graph it was pruned from
            seen["pruned"] = graph.node_mask is not None and unpruned.node_mask is None
        kept = set(graph.to_networkx().nodes)
        groups = president_groups(model, clt, tl_clt.attribute(model, clt, graph.tokens, verbose=False))
        return {name: [n for n in members if n in kept] for name, members in groups.items()}

    monkeypatch.setattr(tl_clt, "propose_supernodes", propose, raising=False)
    assert main(["demo", "-o", str(tmp_path), "-q"]) == 0
    out = capsys.readouterr().out
    assert seen["pruned"]
    assert "groups (tl_clt.propose_supernodes):" in out and "  Year ~2010:" in out
    row = next(line for line in out.splitlines() if line.startswith("Year ~2010"))
    # the row's ablated p(' Barack') recomputed here
    from tl_clt.toyworld import load_toyworld

    model, clt = load_toyworld()
    prompt = "Fact: The president of the United States in 2010 was"
    graph = tl_clt.attribute(model, clt, prompt, verbose=False)
    members = propose(graph.prune(0.8, 0.98), model=model, clt=clt)["Year ~2010"]
    p = tl_clt.steer(model, clt, prompt, tl_clt.ablate(members))[-1].softmax(-1)
    barack = model.tokenizer(" Barack", add_special_tokens=False)["input_ids"][0]
    assert row.split()[-3] == f"{float(p[barack]):.2f}"
    assert (tmp_path / "circuit.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((tmp_path / "graph.json").read_text())
    assert {g[0] for g in data["qParams"]["supernodes"]} == {n for n, m in members_of(out)}


def members_of(out: str):
    for line in out.splitlines():
        if line.startswith("  ") and ": " in line and re.search(r" nodes?, e\.g\. ", line):
            name, rest = line.strip().split(": ", 1)
            yield name, rest


def test_demo_refuses_a_file_as_output_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit) as info:
        main(["demo", "-o", str(tmp_path / "f"), "-q"])
    assert info.value.code == 2


def test_demo_prints_the_proposed_groups(tmp_path, capsys):
    """With this version's own propose_supernodes: the groups it proposes on the pruned graph are printed,
    each with its size, and drawn as the circuit."""
    assert main(["demo", "-o", str(tmp_path), "-q"]) == 0
    out = capsys.readouterr().out
    from tl_clt.toyworld import load_toyworld

    model, clt = load_toyworld()
    prompt = "Fact: The president of the United States in 2010 was"
    graph = tl_clt.attribute(model, clt, prompt, verbose=False)
    proposals = tl_clt.propose_supernodes(graph.prune(0.8, 0.98), model=model, clt=clt, unpruned=graph)
    assert "groups (tl_clt.propose_supernodes):" in out and "year ~2010" in proposals
    printed = dict(members_of(out))
    assert set(printed) == set(proposals)
    for name, members in proposals.items():
        noun = "node" if len(members) == 1 else "nodes"
        assert printed[name].startswith(f"{len(members)} {noun}, e.g. {members[0]}")
    # the steering table steers each group whole: its size and the year's ablated p(' Barack'), recomputed
    whole = proposals.whole("year ~2010")
    assert len(whole) > len(proposals["year ~2010"])
    row = next(line for line in out.splitlines() if line.startswith("year ~2010 ")).split()
    p = tl_clt.steer(model, clt, prompt, tl_clt.ablate(whole))[-1].softmax(-1)
    barack = model.tokenizer(" Barack", add_special_tokens=False)["input_ids"][0]
    assert int(row[2]) == len(whole) and row[-3] == f"{float(p[barack]):.2f}"
    assert (tmp_path / "circuit.png").read_bytes()[:4] == b"\x89PNG"
