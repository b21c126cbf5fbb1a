"""`tl-clt attribute`: end to end on tiny folders, help text, and clear errors for bad arguments."""

from __future__ import annotations

import json
import re

import pytest
from conftest import PROMPT

from tl_clt import export
from tl_clt.cli import main


def _args(model_dir, clt_dir, out, *extra):
    return [
        "attribute",
        "--model",
        str(model_dir),
        "--clt",
        str(clt_dir),
        "--prompt",
        PROMPT,
        "-o",
        str(out),
        "--max-n-logits",
        "4",
        "--batch-size",
        "64",
        "-q",
        *extra,
    ]


def test_attribute_writes_json_png_pt_and_folder(model_dir, clt_dir, tmp_path, capsys):
    out = tmp_path / "out" / "my graph.json"
    code = main(
        _args(
            model_dir,
            clt_dir,
            out,
            "--png",
            str(tmp_path / "g.png"),
            "--pt",
            str(tmp_path / "g.pt"),
            "--folder",
            str(tmp_path / "site"),
            "--node-threshold",
            "0.7",
            "--edge-threshold",
            "0.9",
            "--max-feature-nodes",
            "60",
        )
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "was trained for" not in captured.err  # CLT config model_name matches the model
    data = json.loads(out.read_text())
    export.validate_graph_json(data)
    meta = data["metadata"]
    assert meta["slug"] == "my-graph"
    assert meta["prompt"] == PROMPT
    assert meta["scan"] == "tiny-qwen3"
    assert meta["pruning_settings"] == {"node_threshold": 0.7, "edge_threshold": 0.9}
    assert meta["generation_settings"]["max_n_logits"] == 4
    assert sum(n["feature_type"] == "logit" for n in data["nodes"]) <= 4
    png = (tmp_path / "g.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert (tmp_path / "g.pt").stat().st_size > 0
    assert export.validate_graph_folder(tmp_path / "site") == ["my-graph"]
    written = captured.out.split("\n")
    assert str(out) in written and str(tmp_path / "g.png") in written


def test_progress_goes_to_stderr(model_dir, clt_dir, tmp_path, capsys):
    args = [a for a in _args(model_dir, clt_dir, tmp_path / "g.json") if a != "-q"]
    assert main(args + ["--max-feature-nodes", "20", "--slug", "s1"]) == 0
    captured = capsys.readouterr()
    assert "loading model" in captured.err and "pruned to" in captured.err
    assert captured.out.strip() == str(tmp_path / "g.json")
    data = json.loads((tmp_path / "g.json").read_text())
    assert data["metadata"]["slug"] == "s1"
    assert sum(n["feature_type"] == "cross layer transcoder" for n in data["nodes"]) <= 20


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["attribute", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--model",
        "--clt",
        "--prompt",
        "--output",
        "--png",
        "--max-feature-nodes",
        "--batch-size",
        "--max-n-logits",
        "--desired-logit-prob",
        "--node-threshold",
        "--edge-threshold",
        "--dtype",
        "--device",
        "--slug",
    ):
        assert option in text, option
    assert "float32" in text and "bfloat16" in text


@pytest.mark.parametrize(
    "change, message",
    [
        (["--node-threshold", "1.5"], "between 0 and 1"),
        (["--edge-threshold", "-0.1"], "between 0 and 1"),
        (["--node-threshold", "abc"], "must be a number"),
        (["--desired-logit-prob", "0"], r"in \(0, 1\]"),
        (["--batch-size", "0"], "at least 1"),
        (["--max-feature-nodes", "2.5"], "whole number"),
        (["--dtype", "float64"], "invalid choice"),
        (["--device", "tpu"], "invalid choice"),
        (["--png", "PICTURE.xyz"], "unknown picture type"),
        (["--slug", "../up"], "--slug"),
        (["--prompt", "  "], "--prompt is empty"),
        (["--model", "MISSING"], "--model .*no such folder"),
        (["--clt", "MISSING"], "--clt .*no such folder"),
        (["--model", "FILE"], "--model .*file, not a folder"),
        (["-o", "OUT.txt"], "must end in .json"),
    ],
)
def test_bad_arguments_exit_with_status_2(model_dir, clt_dir, tmp_path, capsys, change, message):
    (tmp_path / "a_file").write_text("x")
    subst = {
        "MISSING": str(tmp_path / "nope"),
        "FILE": str(tmp_path / "a_file"),
        "PICTURE.xyz": str(tmp_path / "p.xyz"),
        "OUT.txt": str(tmp_path / "g.txt"),
    }
    args = _args(model_dir, clt_dir, tmp_path / "g.json")
    flag, value = change[0], subst.get(change[1], change[1])
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "g.json").exists()


def test_missing_subcommand_and_broken_model_folder(tmp_path, clt_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    empty = tmp_path / "empty-model"
    empty.mkdir()
    code = main(_args(empty, clt_dir, tmp_path / "g.json"))
    assert code == 1
    assert "No config.json" in capsys.readouterr().err


def test_clt_file_changed_during_a_run_is_one_line_and_exit_1(
    model_dir, clt_dir, tmp_path, capsys, monkeypatch
):
    import tl_clt
    from tl_clt.clt import CLTFileChangedError

    def changed(*args, **kwargs):
        raise CLTFileChangedError("W_dec_1.safetensors changed on disk since the CLT was loaded; reload it")

    monkeypatch.setattr(tl_clt, "attribute", changed)
    code = main(_args(model_dir, clt_dir, tmp_path / "g.json", "-q"))
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip() == (
        "tl-clt attribute: error: W_dec_1.safetensors changed on disk since the CLT was loaded; reload it"
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (["-o", "FOLDER.json"], r"-o .*that is a folder"),
        (["-o", "UNDER_FILE/g.json"], r"-o .*(not a folder|Not a directory|exists)"),
        (["--png", "UNDER_FILE/g.png"], r"--png .*(not a folder|Not a directory|exists)"),
        (["--pt", "FOLDER.json"], r"--pt .*it is a folder"),
        (["--pt", "SAME"], r"two outputs name the same file"),
        (["--folder", "A_FILE"], r"--folder .*it is a file, not a folder"),
        (["--folder", "BAD_SITE"], r"--folder .*graph-metadata.json is not a readable JSON file"),
        (["--folder", "LIST_SITE"], r"--folder .*is not a graph listing"),
    ],
)
def test_output_paths_are_checked_before_computing(model_dir, clt_dir, tmp_path, capsys, change, message):
    """Every output problem exits 2 with a message before the model is even loaded."""
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "folder.json").mkdir()
    for name, text in (("bad-site", "{oops"), ("list-site", "[]")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "graph-metadata.json").write_text(text)
    subst = {
        "FOLDER.json": str(tmp_path / "folder.json"),
        "UNDER_FILE/g.json": str(tmp_path / "a_file" / "g.json"),
        "UNDER_FILE/g.png": str(tmp_path / "a_file" / "g.png"),
        "SAME": str(tmp_path / "g.json"),
        "A_FILE": str(tmp_path / "a_file"),
        "BAD_SITE": str(tmp_path / "bad-site"),
        "LIST_SITE": str(tmp_path / "list-site"),
    }
    args = [a for a in _args(model_dir, clt_dir, tmp_path / "g.json") if a != "-q"]
    flag, value = change[0], subst[change[1]]
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "loading model" not in err and "Traceback" not in err
    assert sorted(tmp_path.rglob("*")) == before
