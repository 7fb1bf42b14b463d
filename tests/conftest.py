"""Shared test fixtures: tiny random backbones on a 260-word vocabulary, so model tests run in seconds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from transformers import BertTokenizer

from gliclass import build_model
from gliclass.pipeline import missing_cpp_compiler

FIXTURES = Path(__file__).parent / "fixtures"
TINY_VOCAB = FIXTURES / "tiny_vocab.txt"
REPO_CONF = Path(__file__).resolve().parents[1] / "conf"
SHARED_DATA = Path(os.environ.get("GLICLASS_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


# torch.compile on CPU writes C++ kernels; tests that compile need a C++ compiler (the dev machines and CI have g++)
needs_cpp_compiler = pytest.mark.skipif(
    missing_cpp_compiler() is not None, reason="torch.compile on CPU needs a C++ compiler"
)

TINY_BACKBONES = {
    "bert": dict(
        model_type="bert",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    ),
    "deberta": dict(
        model_type="deberta-v2",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
    ),
    "modernbert": dict(
        model_type="modernbert",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    ),
    "t5": dict(model_type="t5", d_model=32, num_layers=2, num_heads=2, d_ff=64, d_kv=16),
}


def tiny_tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab=str(TINY_VOCAB))


def tiny_model(backbone: str = "bert", seed: int = 0, initializer_range: float = 0.3, **config):
    """A tiny random GLiClass model + processor; a larger init range than the default keeps logits informative."""
    torch.manual_seed(seed)
    arch = config.get("architecture_type", "uni-encoder")
    if arch == "encoder-decoder":
        backbone = "t5"
    model, processor = build_model(
        TINY_BACKBONES[backbone], tokenizer=tiny_tokenizer(), initializer_range=initializer_range, **config
    )
    return model.eval(), processor


@pytest.fixture
def make_tiny():
    return tiny_model


@pytest.fixture
def single_thread():
    """Tiny tensors: intra-op threads only add spin-waiting on a shared CPU (about 20x slower here). Modules of tiny-
    model tests use it with `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_configure(config):
    # tiny models spend more time spin-waiting across threads than computing; one thread is fastest on shared CPUs
    torch.set_num_threads(1)


@contextmanager
def hydra_conf_dir() -> Iterator[None]:
    """Hydra initialised on the repository's conf/ (PROJECT_ROOT set, as run.py does), cleared before and after: the
    body of every test module's compose fixture."""
    GlobalHydra.instance().clear()
    os.environ.setdefault("PROJECT_ROOT", str(REPO_CONF.parent))
    try:
        with initialize_config_dir(config_dir=str(REPO_CONF), version_base="1.3"):
            yield
    finally:
        GlobalHydra.instance().clear()
