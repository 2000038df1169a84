"""The training forward and backward pass reads no value back to the host (tests/host_reads.py): on a GPU
each such read would make the host wait for the device. Only a padding mask is read, once per forward
pass (whether it pads at all: an all-ones mask is dropped so that the fused kernels run without one), as
transformers' sdpa mask does."""

import pytest
import torch

from zoo.families import model_class

from ..host_reads import HostReads
from .test_models import batch, make_config

FAMILIES = [
    ("roformer-v2", {}),
    ("gau-alpha", {}),
    ("deepnet", {}),
    ("deepnet", {"position_embedding_type": "learned", "max_position_embeddings": 64}),
]


def train_step(model, **inputs):
    ids, _ = batch()
    with HostReads() as reads:
        model(ids, labels=ids, **inputs).loss.backward()
    return reads


@pytest.mark.parametrize("family,overrides", FAMILIES)
def test_a_training_step_reads_nothing_back(family, overrides):
    config = make_config(family, **overrides)
    model = model_class(config, "masked-lm")(config).train()
    assert train_step(model).sites == []
    _, mask = batch()
    assert train_step(model, attention_mask=mask).functions == ["attention_context"]


def test_learned_positions_refuse_an_input_longer_than_their_table():
    config = make_config("deepnet", position_embedding_type="learned", max_position_embeddings=16)
    model = model_class(config, "base")(config)
    ids, _ = batch()  # 24 tokens
    with pytest.raises(ValueError, match="a 24-token input is longer than the learned position embeddings' "
                                         "max_position_embeddings=16"):
        model(ids)
    with pytest.raises(ValueError, match="position_ids below max_position_embeddings=16"):
        model(ids[:, :16], position_ids=torch.arange(1, 17)[None])
    assert model(ids[:, :16]).last_hidden_state.shape == (3, 16, 32)
