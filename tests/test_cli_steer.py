"""`tl-clt steer`: the printed table matches an independent steer + prediction_table; clear errors."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPT

import tl_clt
from tl_clt.cli import main
from tl_clt.cli.steer import set_spec


def _run(model_dir, clt_dir, *extra):
    return ["steer", "--model", str(model_dir), "--clt", str(clt_dir), "--prompt", PROMPT, "-q", *extra]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("12:-1:847=0", (12, -1, 847, 0.0, False)),
        ("3:5..:7=*2.5", (3, slice(5, None), 7, 2.5, True)),
        ("0:2..4:1=1e-3", (0, slice(2, 4), 1, 1e-3, False)),
        ("1:..-1:0=-2", (1, slice(None, -1), 0, -2.0, False)),
    ],
)
def test_set_syntax(text, expected):
    s = set_spec(text)
    assert (s.layer, s.pos, s.feature, s.value, s.is_factor) == expected


def _active(model, clt):
    acts = tl_clt.feature_activations(model, clt, PROMPT).coalesce()
    layer, pos, feat = acts.indices()[:, acts.values().argmax()].tolist()
    return layer, pos, feat


def test_printed_table_equals_independent_computation(model, clt, model_dir, clt_dir, capsys):
    layer, pos, feat = _active(model, clt)
    assert main(_run(model_dir, clt_dir, "--set", f"{layer}:{pos}:{feat}=*3", "--top-k", "4")) == 0
    printed = capsys.readouterr().out
    acts = tl_clt.feature_activations(model, clt, PROMPT).to_dense()
    ints = [tl_clt.Intervention(layer, pos, feat, 3 * float(acts[layer, pos, feat]))]
    tokens = tl_clt.to_tokens(model, PROMPT)
    after = tl_clt.steer(model, clt, PROMPT, ints)
    with torch.no_grad():
        before = model(tokens[None])[0]
    expected = str(tl_clt.prediction_table(model, before, after, k=4))
    assert printed.strip() == expected.strip()
    assert not torch.allclose(before[-1], after[-1]), "the chosen steering must change the output"


def test_generate_prints_both_continuations(model_dir, clt_dir, capsys, model, clt):
    layer, pos, feat = _active(model, clt)
    code = main(_run(model_dir, clt_dir, "--set", f"{layer}:{pos}..:{feat}=0", "--generate", "3"))
    assert code == 0
    out = capsys.readouterr().out
    plain = tl_clt.generate(model, clt, PROMPT, [], max_new_tokens=3)
    steered = tl_clt.generate(
        model,
        clt,
        PROMPT,
        [tl_clt.Intervention(layer, slice(pos, None), feat, 0.0)],
        max_new_tokens=3,
        freeze_attention=True,
    )
    assert f"without: {plain!r}" in out and f"steered: {steered!r}" in out


@pytest.mark.parametrize("bad", ["12-1-847=0", "1:2:3=abc", "1:2:3=nan", "a:1:2=0"])
def test_bad_set_exits_2(model_dir, clt_dir, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        main(_run(model_dir, clt_dir, "--set", bad))
    assert exc.value.code == 2
    assert "--set" in capsys.readouterr().err


@pytest.mark.parametrize(
    "spec,match",
    [("7:1:0=0", "layer"), ("0:1:500=0", "feature"), ("0:99:0=*2", "position"), ("0:1:500=*2", "feature")],
)
def test_out_of_range_exits_1_with_a_message(model_dir, clt_dir, spec, match, capsys):
    assert main(_run(model_dir, clt_dir, "--set", spec)) == 1
    err = capsys.readouterr().err
    assert "tl-clt steer: error:" in err and match in err.lower()


def test_help_explains_options(capsys):
    with pytest.raises(SystemExit):
        main(["steer", "--help"])
    out = capsys.readouterr().out
    for flag in ("--set", "--no-freeze-attention", "--direct-effects", "--top-k", "--generate", "--dtype"):
        assert flag in out
