"""`tl-clt dashboards build / show` end to end on the tiny model, and their argument errors."""

from __future__ import annotations

import json

import pytest

from tl_clt.cli import main
from tl_clt.dashboards import FeatureDashboards

DOCS = [
    "Fact: The president of the United States in 2010 was Barack Obama.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps.",
    "In 1776 the declaration was signed; in 1969 people walked on the moon.",
] * 3


def test_build_then_show(model_dir, clt_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(DOCS) + "\n")
    out = tmp_path / "features"
    args = ["dashboards", "build", "--model", str(model_dir), "--clt", str(clt_dir), "--texts", str(corpus)]
    code = main([*args, "-o", str(out), "--context-len", "16", "--batch-size", "4", "--n-top", "3", "-q"])
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out)
    dash = FeatureDashboards.from_pretrained(out)
    assert dash.n_layers == 3 and dash.n_features == [96] * 3
    manifest = json.loads((out / "dashboards.json").read_text())
    assert manifest["config"]["context_len"] == 16 and manifest["documents"] == [[0, len(DOCS)]]
    assert max(len(g["examples"]) for g in dash.record(0, 0)["examples_quantiles"][:1]) <= 3

    assert (
        main(["dashboards", "show", "--dashboards", str(out), "1", "7", "--html", str(tmp_path / "c.html")])
        == 0
    )
    printed = capsys.readouterr().out
    assert printed.startswith("FeatureCard(layer=1, feature=7)")
    assert "<svg" in (tmp_path / "c.html").read_text() or "(no examples)" in printed
    assert main(["dashboards", "show", "--dashboards", str(out), "1", "7", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == dash.record(1, 7)


def test_errors(model_dir, clt_dir, tmp_path, capsys):
    assert main(["dashboards", "show", "--dashboards", str(tmp_path), "0", "0"]) == 1
    assert "without features/index.json.gz" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["dashboards", "show", "0", "0"])
    assert info.value.code == 2 and "give either --clt or --dashboards" in capsys.readouterr().err
    base = [
        "dashboards",
        "build",
        "--model",
        str(model_dir),
        "--clt",
        str(clt_dir),
        "-o",
        str(tmp_path / "o"),
    ]
    with pytest.raises(SystemExit) as info:
        main([*base, "--texts", str(tmp_path / "absent.txt")])
    assert info.value.code == 2 and "no such file" in capsys.readouterr().err
    (tmp_path / "c.txt").write_text("hello\n")
    with pytest.raises(SystemExit):
        main([*base, "--texts", str(tmp_path / "c.txt"), "--n-intervals", "3"])
    assert "n_intervals (3) must divide" in capsys.readouterr().err
