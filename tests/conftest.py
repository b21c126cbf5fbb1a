"""Shared fixtures: tiny Qwen3 folders and CLTs made in code (no downloads)."""

from __future__ import annotations

import warnings

import pytest
import torch

from tl_clt import CrossLayerTranscoder, load_qwen3, synthetic
from tl_clt.loading import _tl_version

TL_MAJOR = int(_tl_version().split(".")[0])

warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")
# The test models are tiny: extra intra-op threads only fight over the shared cores (4x slower under load).
torch.set_num_threads(1)
PROMPT = "Fact: The president of the United States in 2010 was"


@pytest.fixture(scope="session")
def tokenizer():
    return synthetic.make_tokenizer()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer):
    return synthetic.make_qwen3_folder(
        tmp_path_factory.mktemp("qwen3") / "tiny-qwen3",
        tokenizer=tokenizer,
        num_hidden_layers=3,
        initializer_range=0.1,
    )


@pytest.fixture(scope="session")
def clt_dir(tmp_path_factory):
    return synthetic.make_random_clt_folder(
        tmp_path_factory.mktemp("clt") / "clt", n_layers=3, d_model=64, n_features=96, density=0.1
    )


@pytest.fixture()
def model(model_dir):
    return load_qwen3(model_dir, backend=None)  # the installed TL's: hooked on 3.x, bridge on 4.x


# Suites that must hold on both TransformerLens backends take `backend` (marked `hooked` / `bridge`);
# the transformer-lens 4.x CI step runs `-m bridge` (HookedTransformer is gone in 4.x).
@pytest.fixture(
    scope="session",
    params=[
        pytest.param("hooked", marks=pytest.mark.hooked),
        pytest.param("bridge", marks=pytest.mark.bridge),
    ],
)
def backend(request):
    return request.param


def pytest_collection_modifyitems(config, items):
    if TL_MAJOR >= 4:
        skip = pytest.mark.skip(
            reason=f"needs a HookedTransformer: transformer-lens 3.x (have {_tl_version()})"
        )
        for item in items:
            if "hooked" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def clt(clt_dir):
    return CrossLayerTranscoder.from_pretrained(clt_dir, dtype=torch.float32)


@pytest.fixture(scope="session")
def small_clt_dir(tmp_path_factory):
    """A CLT that fits the `model` fixture (3 layers, d_model 64) with 16 features: fast graphs."""
    return synthetic.make_random_clt_folder(
        tmp_path_factory.mktemp("small") / "clt", 3, 64, 16, density=0.2, model_name="tiny-qwen3"
    )


@pytest.fixture(scope="session")
def toy():
    """The shipped toy world, the story prompt's graph and the four groups (tests/president_groups.py)."""
    from types import SimpleNamespace

    from president_groups import president_groups

    from tl_clt import attribute
    from tl_clt.toyworld import load_toyworld

    model, clt = load_toyworld()
    graph = attribute(model, clt, PROMPT, verbose=False)
    return SimpleNamespace(model=model, clt=clt, graph=graph, groups=president_groups(model, clt, graph))
