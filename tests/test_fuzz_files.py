"""Fuzz every reader of untrusted bytes: truncated or byte-flipped files end in our typed errors.

Readers: graph files (this format and the legacy one), a CLT folder's config.yaml, encoder and decoder
safetensors files (decoders read row by row, lazily), the graph JSON export (`validate_graph_json`,
`write_graph_folder`) and `graph-metadata.json`. For each mutated file the reader must succeed or raise
one of the listed exception types *from tl_clt's own code* (not a JSONDecodeError, SafetensorError,
UnicodeDecodeError or torch error passed through), within a time limit, and write nothing outside the
example's own output folder.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import jsonschema
import pytest
import torch
from graph_factory import make_graph
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import tl_clt
from tl_clt import AttributionGraph, CrossLayerTranscoder, synthetic
from tl_clt.clt import CLTFileChangedError

TL_CLT = Path(tl_clt.__file__).resolve().parent
EXAMPLES = 50
SECONDS = 20  # one example may take this long before it counts as a hang
SETTINGS = dict(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# ------------------------------------------------------------------------ mutations
def mutations(data: bytes, header: int) -> st.SearchStrategy[bytes]:
    """Truncations and 1-8 byte flips of `data`; most flips land in the first `header` bytes, where a
    flip changes structure rather than a weight's value."""
    n = len(data)
    position = st.one_of(st.integers(0, max(0, min(header, n) - 1)), st.integers(0, n - 1))
    flips = st.lists(st.tuples(position, st.integers(1, 255)), min_size=1, max_size=8)

    def flip(changes) -> bytes:
        out = bytearray(data)
        for i, x in changes:
            out[i] ^= x
        return bytes(out)

    return st.one_of(st.integers(0, n - 1).map(lambda k: data[:k]), flips.map(flip))


def safetensors_header(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


@contextmanager
def time_limit(seconds: int):
    def hang(signum, frame):
        raise TimeoutError(f"a reader ran longer than {seconds} s (a hang?)")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def raised_in_tl_clt(err: BaseException) -> bool:
    """The innermost Python frame of the error is tl_clt's: we raised it (or an OS call of ours did)."""
    tb, where = err.__traceback__, None
    while tb is not None:
        where, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return where is not None and Path(where).resolve().is_relative_to(TL_CLT)


def check_reader(read, allowed: tuple[type[BaseException], ...], root: Path, foreign: tuple = ()) -> None:
    """Run `read()`; it may succeed or raise `allowed` (raised in tl_clt) or `foreign` (documented errors
    of a library, raised anywhere); nothing appears in `root` outside `root/work`."""
    outcome = "read"
    try:
        with time_limit(SECONDS):
            read()
    except foreign as err:
        outcome = type(err).__name__
    except allowed as err:
        outcome = type(err).__name__
        if not raised_in_tl_clt(err):
            raise AssertionError(f"{outcome} came from outside tl_clt: {err}") from err
    event(outcome)  # --hypothesis-show-statistics: how often each outcome happened
    assert sorted(p.name for p in root.iterdir()) == ["work"], "a file was written outside the folder"


@contextmanager
def example_root():
    root = Path(tempfile.mkdtemp(prefix="tl-clt-fuzz-"))
    (root / "work").mkdir()
    try:
        yield root, root / "work"
    finally:
        shutil.rmtree(root)


# ------------------------------------------------------------------------ inputs
@pytest.fixture(scope="module")
def graph() -> AttributionGraph:
    return make_graph([(0, 1, 3), (1, 2, 4), (2, 3, 5), (0, 3, 1)], density=1.0).prune(0.9, 0.99)


@pytest.fixture(scope="module")
def originals(graph, tmp_path_factory) -> dict[str, bytes]:
    """The well-formed files each test mutates."""
    tmp = tmp_path_factory.mktemp("originals")
    graph.save(tmp / "g.pt")
    blob = {f.name: getattr(graph, f.name) for f in fields(graph)}
    torch.save({"format": "tl_clt.AttributionGraph/1", "graph": blob}, tmp / "legacy.pt")
    graph.to_json(tmp / "g.json")
    tl_clt.write_graph_folder({"g": graph}, tmp / "site")
    clt = synthetic.make_random_clt_folder(tmp / "clt", 2, 8, 4, density=0.5)
    out = {name: (tmp / name).read_bytes() for name in ("g.pt", "legacy.pt", "g.json")}
    out["listing"] = (tmp / "site" / "graph-metadata.json").read_bytes()
    out.update({f"clt/{p.name}": p.read_bytes() for p in clt.iterdir()})
    return out


def clt_folder(originals: dict[str, bytes], folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir()
    for key, original in originals.items():
        if key.startswith("clt/"):
            (folder / key[4:]).write_bytes(data if key[4:] == name else original)
    return folder


def read_clt(folder: Path) -> None:
    """Load the CLT lazily and read every decoder row, as attribution would."""
    clt = CrossLayerTranscoder.from_pretrained(folder)
    for layer in range(clt.n_layers):
        clt.decoder_rows(layer, torch.arange(clt.n_features))


CLT_ERRORS = (ValueError, KeyError, FileNotFoundError, CLTFileChangedError)


# ------------------------------------------------------------------------ the fuzz tests
# (run with --hypothesis-show-statistics to see how often each reader read, or raised which error)
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch on flipped legacy files
@pytest.mark.parametrize("name", ["g.pt", "legacy.pt"])
@settings(**SETTINGS)
@given(draw=st.data())
def test_graph_files(originals, name, draw):
    data = originals[name]
    mutated = draw.draw(mutations(data, safetensors_header(data) if name == "g.pt" else 200))
    with example_root() as (root, work):
        (work / "g.pt").write_bytes(mutated)
        check_reader(lambda: AttributionGraph.load(work / "g.pt"), (ValueError,), root)
        check_reader(lambda: tl_clt.write_graph_folder([work / "g.pt"], work / "site"), (ValueError,), root)


@pytest.mark.parametrize("name", ["config.yaml", "W_enc_1.safetensors", "W_dec_0.safetensors"])
@settings(**SETTINGS)
@given(draw=st.data())
def test_clt_files(originals, name, draw):
    data = originals[f"clt/{name}"]
    header = len(data) if name.endswith(".yaml") else safetensors_header(data)
    mutated = draw.draw(mutations(data, header))
    with example_root() as (root, work):
        folder = clt_folder(originals, work / "clt", name, mutated)
        check_reader(lambda: read_clt(folder), CLT_ERRORS, root)


@settings(**SETTINGS)
@given(draw=st.data())
def test_graph_json(originals, draw):
    data = originals["g.json"]
    mutated = draw.draw(mutations(data, len(data)))
    with example_root() as (root, work):
        (work / "g.json").write_bytes(mutated)
        schema = (jsonschema.ValidationError,)  # validate_graph_json's documented error
        check_reader(lambda: tl_clt.validate_graph_json(work / "g.json"), (ValueError,), root, schema)
        check_reader(lambda: tl_clt.write_graph_folder([work / "g.json"], work / "site"), (ValueError,), root)


@settings(**SETTINGS)
@given(draw=st.data())
def test_graph_metadata_listing(originals, graph, draw):
    data = originals["listing"]
    mutated = draw.draw(mutations(data, len(data)))
    with example_root() as (root, work):
        site = work / "site"
        site.mkdir()
        (site / "graph-metadata.json").write_bytes(mutated)
        check_reader(lambda: tl_clt.write_graph_folder({"h": graph}, site), (ValueError,), root)
