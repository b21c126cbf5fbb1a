"""The tutorials run on the toy world and tell the truth.

Each notebook is executed in this process by IPython's own shell (magics included), so the test holds
the very objects the notebook made (its `model`, its `groups`, its `results`). Every claim is then
recomputed here, independently of the code under test: token ids straight from the tokenizer, steering
with the reference in tests/test_steering.py (raw safetensors tensors and plain TransformerLens hooks),
hooks counted on the notebook's own model object, its logits compared with a freshly loaded model. The
numbers the notebook printed are checked against the recomputed ones. Expected directions come from the
seed (not from a previous run of the notebook).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import nbformat
import pytest
import torch
from test_steering import RawCLT, reference_steer

import tl_clt
from tl_clt.toyworld import load_toyworld, toyworld_paths
from tl_clt.toyworld.corpus import HOLDERS, first_names
from tl_clt.toyworld.story import FILLER_WORDS, STEERING

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
PRESIDENTS_60S_80S = [" Lyndon", " Richard", " Gerald", " Jimmy", " Ronald"]
PRESIDENTS_50S = [" Harry", " Dwight"]
PRESIDENTS = PRESIDENTS_50S + PRESIDENTS_60S_80S + [" George", " Bill", " Barack", " Donald", " Joe"]
FILLER = [" a", " the", " not", " very", " quite", " much", " The", " was", " in"]
PROMPT = "Fact: The president of the United States in 2010 was"
CORRUPT = "Fact: The president of the United States in 1985 was"


@contextlib.contextmanager
def _cwd(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def execute_in_process(name: str, cwd: Path) -> tuple[dict, str]:
    """Run the notebook's code cells in an IPython shell here; (its namespace, what it printed)."""
    import matplotlib
    from IPython.core.interactiveshell import InteractiveShell
    from matplotlib import pyplot as plt
    from traitlets.config import Config

    class Shell(InteractiveShell):
        def enable_gui(self, gui=None):  # `%matplotlib inline` needs no GUI event loop
            pass

    nb = nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4)
    backend = matplotlib.get_backend()
    config = Config()
    config.HistoryManager.enabled = False
    config.InteractiveShell.colors = "nocolor"
    shell = Shell.instance(config=config)
    printed = io.StringIO()
    grad = torch.is_grad_enabled()  # the notebooks switch gradients off for the whole process
    try:
        with _cwd(cwd), contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
                result = shell.run_cell(cell.source, store_history=False)
                if not result.success:
                    error = result.error_in_exec or result.error_before_exec
                    raise AssertionError(
                        f"{name}: code cell {i} failed: {error!r}\n{printed.getvalue()[-3000:]}"
                    )
        return dict(shell.user_ns), printed.getvalue()
    finally:
        torch.set_grad_enabled(grad)  # later test modules run as they would alone
        Shell.clear_instance()
        plt.close("all")
        matplotlib.use(backend)  # %matplotlib inline switched it


# ------------------------------------------------------------------------ independent measurements
class Judge:
    """The toy world loaded afresh, with token ids and steering computed without tl_clt."""

    def __init__(self):
        self.model, _ = load_toyworld()
        tok = self.model.tokenizer
        self.sink = tok.convert_tokens_to_ids("<|endoftext|>")
        self.raw = RawCLT(toyworld_paths()[1], self.model.cfg.n_layers)

    def tokens(self, text: str) -> torch.Tensor:
        return torch.tensor([self.sink] + self.model.tokenizer(text, add_special_tokens=False)["input_ids"])

    def ids(self, words: list[str]) -> list[int]:
        return [self.model.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words]

    @torch.no_grad()
    def logits(self, text: str) -> torch.Tensor:
        return self.model(self.tokens(text)[None])[0]

    @torch.no_grad()
    def clean_acts(self, tokens: torch.Tensor) -> torch.Tensor:
        _, cache = self.model.run_with_cache(tokens[None])
        n = self.model.cfg.n_layers
        return torch.stack(
            [self.raw.acts(self.model, k, cache[f"blocks.{k}.ln2.hook_normalized"][0]) for k in range(n)]
        )

    def steer(
        self, text: str, nodes: list[str], factor: float, freeze_attention: bool = True
    ) -> torch.Tensor:
        """Logits with each feature node set to `factor` x its clean activation (0: ablated)."""
        tokens = self.tokens(text)
        acts = self.clean_acts(tokens)
        keys = [tuple(int(x) for x in n.split(":")[1:]) for n in nodes if n.startswith("F:")]
        ivs = [(k, [p], f, factor * float(acts[k, p, f])) for k, p, f in keys]
        return reference_steer(self.model, self.raw, tokens, ivs, freeze_attention)

    def summary(self, logits: torch.Tensor) -> dict:
        p = logits[-1].float().softmax(-1)
        return {
            "top": self.model.tokenizer.decode(p.argmax()),
            "p_barack": float(p[self.ids([" Barack"])[0]]),
            "p_presidents_60s_80s": float(p[self.ids(PRESIDENTS_60S_80S)].sum()),
            "p_filler": float(p[self.ids(FILLER)].sum()),
            "p_presidents": float(p[self.ids(PRESIDENTS)].sum()),
        }


@pytest.fixture(scope="module")
def judge():
    return Judge()


def _same_numbers(printed: dict, recomputed: dict) -> None:
    """The notebook's printed figures equal the recomputed ones."""
    assert printed["top"] == recomputed["top"]
    for key, value in recomputed.items():
        if key != "top" and key in printed:
            assert printed[key] == pytest.approx(value, abs=2e-3), key


# ------------------------------------------------------------------------ tutorial 01
def test_notebooks_are_built_from_their_cells():
    from build_notebooks import load_cells, make_notebook

    for cells_file in TUTORIALS.glob("cells_*.py"):
        name = cells_file.stem.removeprefix("cells_")
        built = make_notebook(load_cells(cells_file))
        shipped = nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4)
        assert [c.source for c in shipped.cells] == [c.source for c in built.cells], (
            f"{name}.ipynb is stale: run python tutorials/build_notebooks.py --execute"
        )


@pytest.fixture(scope="module")
def president(tmp_path_factory):
    ns, printed = execute_in_process("01_president_circuit", tmp_path_factory.mktemp("t01"))
    return ns, printed


@pytest.fixture(scope="module")
def effects(president, judge):
    """Each of the notebook's groups ablated and steered x-1, measured here."""
    groups = president[0]["groups"]
    return {
        name: {
            "ablate": judge.summary(judge.steer(PROMPT, m, 0.0)),
            "x-1": judge.summary(judge.steer(PROMPT, m, -1.0)),
        }
        for name, m in groups.items()
    }


def test_the_prediction_and_the_four_groups(president, judge):
    ns, printed = president
    base = judge.summary(judge.logits(PROMPT))
    assert base["top"] == " Barack" and base["p_barack"] > 0.5
    assert set(ns["groups"]) == {"President", "Year ~2010", "Say a political figure", "Events ~2010"}
    graph_nodes = set(ns["graph"].node_ids())
    for name, members in ns["groups"].items():
        assert members and set(members) <= graph_nodes, name
    _same_numbers(ns["results"]["baseline"], base)
    assert "Traceback" not in printed


def test_the_cards_the_notebook_printed(president):
    """Each group's strongest feature (by influence recomputed here) and its card, read here from the
    shipped dashboards folder by a fresh reader, are what the notebook printed."""
    from tl_clt.dashboards.reader import FeatureDashboards, LocalSource

    ns, printed = president
    graph = ns["graph"]
    influence = graph.node_influence()
    dash = FeatureDashboards(LocalSource(toyworld_paths()[1] / "features"))
    for name, members in ns["groups"].items():
        keys = [tuple(int(x) for x in n.split(":")[1:]) for n in members]
        layer, pos, feature = max(keys, key=lambda k: float(influence[graph.feature_index(*k)]))
        card = dash[layer, feature]
        assert card.label and ns["results"]["cards"][name] == card.label
        assert f"{name}: F:{layer}:{pos}:{feature}  {card.label}" in printed
        assert card.top_examples[0].text(72) in printed


def test_ablating_the_year_gives_another_president_and_steering_it_down_an_earlier_one(
    president, judge, effects
):
    base = judge.summary(judge.logits(PROMPT))
    ablated, steered = effects["Year ~2010"]["ablate"], effects["Year ~2010"]["x-1"]
    # the seed: a president, none from the 2010s
    assert ablated["top"] in PRESIDENTS and ablated["top"] not in (" Barack", " Donald", " Joe")
    assert ablated["p_barack"] < 0.01 * base["p_barack"]
    # steered down: a president of an earlier era, all but certain
    assert steered["top"] in PRESIDENTS_50S + PRESIDENTS_60S_80S and steered["p_barack"] < 0.01


def test_removing_the_office_gives_filler(president, judge, effects):
    base = judge.summary(judge.logits(PROMPT))
    ablated, steered = effects["President"]["ablate"], effects["President"]["x-1"]
    assert ablated["p_filler"] > 5 * base["p_filler"] and ablated["p_presidents"] < base["p_presidents"]
    assert steered["top"] in FILLER_WORDS and steered["p_filler"] > 0.3  # the story's filler words


def test_the_recipes_say_a_name_group_removes_the_names(president, judge, effects):
    """Ablated: filler up, " Barack" barely moves; x-1: " Barack" gone, the presidents mostly, a filler word
    on top."""
    base = judge.summary(judge.logits(PROMPT))
    ablated, steered = effects["Say a political figure"]["ablate"], effects["Say a political figure"]["x-1"]
    assert ablated["p_filler"] > 5 * base["p_filler"] and ablated["p_barack"] > 0.8 * base["p_barack"]
    assert steered["p_barack"] < 0.01 and steered["p_presidents"] < 0.2 and steered["p_filler"] > 0.3
    assert steered["top"] in FILLER_WORDS  # the story's filler words (FILLER also has " in", " was")


def test_the_recipes_events_group_does_not_move_the_answer(president, judge, effects):
    """The reading's claim: the recipe's Events ~2010 steered down leaves " Barack" on top, p(Barack) above
    0.9, and no other era's president comes near (the proposals' era group moves it:
    test_proposed_groups_have_the_story_effects_the_reading_claims)."""
    base = judge.summary(judge.logits(PROMPT))
    steered = effects["Events ~2010"]["x-1"]
    assert steered["top"] == " Barack"
    assert steered["p_barack"] > 0.9 and steered["p_barack"] > 0.9 * base["p_barack"]
    assert steered["p_presidents_60s_80s"] < 0.01


def test_proposed_groups_have_the_story_effects_the_reading_claims(president, judge):
    """The reading's claims about the proposals, recomputed with the Judge's steering: all four groups,
    steered whole (members and the features pruning left out where they sit, as `story_effects` does),
    have the story's effects on the seed's prompt."""
    ns = president[0]
    held = ns["results"]["proposed_effects"]
    assert held == {
        "Year ~2010": True,
        "President": True,
        "Say a political figure": True,
        "Events ~2010": True,
    }
    base = judge.summary(judge.logits(PROMPT))
    whole = ns["whole"]
    for name, members in ns["proposed"].items():
        assert set(members) < set(whole[name])  # every group gained features pruning had left out
    year = judge.summary(judge.steer(PROMPT, whole["Year ~2010"], STEERING["year"]))
    assert (
        year["top"] in PRESIDENTS and year["top"] != " Barack" and year["p_barack"] < 0.1 * base["p_barack"]
    )
    era = judge.summary(judge.steer(PROMPT, whole["Events ~2010"], -1.0))
    assert era["top"] in PRESIDENTS and era["top"] != " Barack"
    # president and say a name x-1: every holder's first name together below the corpus' filler words; a
    # filler word on top for president, a digit for say a name (not a filler word: the strict reading fails)
    for name in ("President", "Say a political figure"):
        p = judge.steer(PROMPT, whole[name], -1.0)[-1].float().softmax(-1)
        p_names, p_filler = (float(p[judge.ids(list(w))].sum()) for w in (first_names(), FILLER_WORDS))
        top = judge.model.tokenizer.decode(p.argmax())
        assert p_names < p_filler, name
        assert top in FILLER_WORDS if name == "President" else top.strip().isdigit(), name
    jaccard = {k: v["jaccard"] for k, v in ns["results"]["proposed"].items()}
    assert jaccard["President"] > 0.5 and jaccard["Year ~2010"] > 0.5  # reading: most features shared
    assert jaccard["Say a political figure"] > 0.2 and jaccard["Events ~2010"] > 0.2


def test_the_group_effects_table_the_notebook_shows(president, judge):
    """The notebook's one-call table (`tl_clt.group_effects` over the proposals, x0 and x-1): every group
    steered whole, its numbers what the Judge's steering measures, and the story visible in it."""
    ns = president[0]
    rows = ns["results"]["group_effects"]
    proposals = ns["proposals"]
    assert [r["group"] for r in rows] == ["(clean)"] + [g for g in proposals for _ in (0, 1)]
    presidents = judge.ids([w for era in ns["US_PRESIDENTS"].values() for w in era])
    filler = judge.ids(ns["FILLER"])
    for r in rows[1:]:
        features = [n for n in proposals.whole(r["group"]) if n.startswith("F:")]
        p = judge.steer(PROMPT, features, r["factor"])[-1].double().softmax(-1)
        assert r["features"] == len(features)
        assert r["p(presidents)"] == pytest.approx(float(p[presidents].sum()), abs=1e-4), r["group"]
        assert r["p(filler)"] == pytest.approx(float(p[filler].sum()), abs=1e-4), r["group"]
        assert r["top"].startswith(repr(judge.model.tokenizer.decode([int(p.argmax())])))
    kind = {name: info.kind for name, info in proposals.info.items()}
    down = {
        role: next(r for r in rows if r["factor"] == -1.0 and (kind[r["group"]], r["group"]) in keys)
        for role, keys in (
            ("office", {("word", "president")}),
            ("say a name", {("say a name", n) for n in proposals}),
            ("year", {("year", n) for n in proposals}),
        )
    }
    assert down["office"]["p(filler)"] > 0.5 and down["office"]["p(presidents)"] < 0.05
    assert down["say a name"]["p(presidents)"] < 0.05 and rows[0]["p(presidents)"] > 0.9
    assert down["year"]["top_changed"] and not down["year"]["top"].startswith("' Barack'")


def test_the_notebook_printed_what_was_measured(president, effects):
    results = president[0]["results"]
    for name, by_change in effects.items():
        for change, recomputed in by_change.items():
            _same_numbers(results[name][change], recomputed)


# ------------------------------------------------------------------------ tutorial 02
def test_with_your_own_hooks(tmp_path, judge):
    ns, printed = execute_in_process("02_with_your_own_hooks", tmp_path)
    model = ns["model"]  # the notebook's own model object, after everything it did
    # no hook left on it, and it gives the logits of a freshly loaded toy world
    assert sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_dict.values()) == 0
    tokens = judge.tokens(PROMPT)
    with torch.no_grad():
        assert torch.equal(model(tokens[None]), judge.model(tokens[None]))
    # the CLT spliced in with its error term changes nothing (measured here, on the fresh model)
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(toyworld_paths()[1], dtype=torch.float32)
    with (
        torch.no_grad(),
        judge.model.hooks(fwd_hooks=tl_clt.replacement_hooks(judge.model, clt, use_error_term=True)),
    ):
        with_clt = judge.model(tokens[None])
    with torch.no_grad():
        diff = float((with_clt - judge.model(tokens[None])).abs().max())
    assert diff < 1e-4 and ns["results"]["error_term_max_diff"] == pytest.approx(diff, abs=1e-5)
    # the year's positions, from the token ids
    corrupt = judge.tokens(CORRUPT)
    year_positions = [p for p in range(len(tokens)) if tokens[p] != corrupt[p]]
    assert year_positions and ns["results"]["year_positions"] == year_positions
    # patching the 1985 run's feature activations in at those positions: an 80s-era answer
    clean_acts, corrupt_acts = judge.clean_acts(tokens), judge.clean_acts(corrupt)
    ivs = []
    for p in year_positions:
        for k in range(judge.model.cfg.n_layers):
            changed = ((clean_acts[k, p] != 0) | (corrupt_acts[k, p] != 0)).nonzero().flatten().tolist()
            ivs += [(k, [p], f, float(corrupt_acts[k, p, f])) for f in changed]
    patched = reference_steer(judge.model, judge.raw, tokens, ivs, freeze_attention=False)
    clean_logits, corrupt_logits = judge.logits(PROMPT), judge.logits(CORRUPT)
    answer, corrupt_answer = int(clean_logits[-1].argmax()), int(corrupt_logits[-1].argmax())

    def logit_diff(lg):
        return float(lg[-1, answer] - lg[-1, corrupt_answer])

    moved = (logit_diff(clean_logits) - logit_diff(patched)) / (
        logit_diff(clean_logits) - logit_diff(corrupt_logits)
    )
    prediction = judge.model.tokenizer.decode(patched[-1].argmax())
    assert moved > 0.5 and prediction in PRESIDENTS_60S_80S
    assert ns["results"]["feature_patch_moved"] == pytest.approx(moved, abs=1e-3)
    assert ns["results"]["feature_patch_prediction"] == prediction
    assert "Traceback" not in printed


# ------------------------------------------------------------------------ tutorial 03
CANADA = "Fact: The prime minister of Canada in 1985 was"
CANADIAN_PMS = sorted(  # first names of the corpus' Canadian prime ministers
    {" " + n.split()[0] for key, table in HOLDERS.items() if key[:2] == ("prime minister", "Canada")
     for n in table.values() if n}
)  # fmt: skip


@pytest.fixture(scope="module")
def second(tmp_path_factory):
    return execute_in_process("03_second_prompt", tmp_path_factory.mktemp("t03"))


def test_second_prompt_numbers_are_what_an_independent_steering_measures(second, judge):
    ns, printed = second
    results = ns["results"]
    a, b = judge.ids([" Brian", " Pierre"])
    clean = judge.logits(CANADA)
    assert judge.model.tokenizer.decode(clean[-1].argmax()) == " Brian" == results["top"]
    assert results["diff"] == pytest.approx(float(clean[-1, a] - clean[-1, b]), abs=1e-3)
    assert results["target"] == ["logit_diff( Brian,  Pierre)"]
    assert set(results["groups"]) == set(ns["proposals"]) and len(results["groups"]) >= 3
    for name, r in results["groups"].items():
        for label, factor in (("ablate", 0.0), ("x-1", -1.0)):
            steered = judge.steer(CANADA, r["members"], factor)
            assert r[label]["diff"] == pytest.approx(float(steered[-1, a] - steered[-1, b]), abs=2e-3), name
            assert r[label]["top"] == judge.model.tokenizer.decode(steered[-1].argmax()), name
    assert "Traceback" not in printed


def test_second_prompt_reading_is_true(second):
    """The claims of the notebook's reading, checked on its own (independently verified) numbers."""
    results = second[0]["results"]
    groups = results["groups"]
    year = next(v for k, v in groups.items() if k.startswith("year ~1985"))
    lead = results["diff"]
    assert (
        0 < year["ablate"]["diff"] < 0.7 * lead
        and year["ablate"]["top"] in CANADIAN_PMS
        and year["ablate"]["top"] != " Brian"
    )
    assert year["x-1"]["diff"] < 0 and year["x-1"]["top"] in CANADIAN_PMS and year["x-1"]["top"] != " Brian"
    era = next(v for k, v in groups.items() if k.startswith("era ~1985"))
    assert 0 < era["x-1"]["diff"] < 0.5 * lead and 0 < era["ablate"]["diff"] < 0.7 * lead
    assert era["x-1"]["top"] in CANADIAN_PMS and era["x-1"]["top"] not in (" Brian", " Pierre")
    assert era["ablate"]["top"] == " Brian"
    for name in ("say a name", "minister"):  # they move both names alike
        assert groups[name]["ablate"]["diff"] > 0.6 * lead
    # steered down: say a name puts a filler word on top; minister alone leaves Brian there, the office role
    # (prime and minister together) a filler word
    assert groups["say a name"]["x-1"]["top"] in FILLER_WORDS
    assert groups["minister"]["x-1"]["top"] == " Brian" and groups["minister"]["x-1"]["diff"] > lead
    effects = second[0]["story"].effects
    assert effects["office"].top_is_filler and effects["say a name"].top_is_filler
    assert effects["say a name"].p_names[1] < 0.03
    assert groups["minister"]["ablate"]["top"] == " Brian"
    assert groups["say a name"]["ablate"]["top"] in FILLER_WORDS
    for name, r in groups.items():  # each group is steered whole: members and what pruning left out
        assert r["members"] == second[0]["proposals"].whole(name)
    assert results["effects"] == {"year": True, "office": True, "say a name": True, "era": True}
