"""Shared fixtures of the CLUE tests: the format-exact fixture tree and a tiny model folder."""

from pathlib import Path

import pytest
import torch

import zoo

FIXTURES = Path(__file__).parent / "fixtures"
# The presets' default dropout stays on (0.1 on hidden states and attention probabilities): fine-tuning
# then runs the dropout paths of the kernels, as it does for users.
TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tokenizer():
    return zoo.default_tokenizer()


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """A randomly initialised 1-layer RoFormerV2 (hidden 32) saved with the default tokenizer."""
    folder = tmp_path_factory.mktemp("clue-model") / "tiny"
    torch.manual_seed(1234)  # its own seed: a --random-init model built with seed 0 must differ from it
    zoo.create("roformer-v2-mini", **TINY).save_pretrained(folder)
    zoo.default_tokenizer().save_pretrained(folder)
    return folder
