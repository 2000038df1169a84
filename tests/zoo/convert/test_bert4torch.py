"""bert4torch checkpoints → our models, checked in fp64 against the semantics the weights were trained with."""

import json

import pytest
import torch

from zoo.convert import ConversionError, convert_checkpoint

from .source_checkpoints import (DIMS, bert4keras_variables, bert4torch_config, bert4torch_state_dict, token_batch,
                                 write_bert4torch_folder)
from .source_reference import Bert4TorchWeights, assert_model_matches

FAMILIES = ["roformer-v2", "gau-alpha"]


def _checkpoint(tmp_path, family, mutate=None, config=None, with_norm_weights=False, seed=1):
    dims = DIMS[family]
    state = bert4torch_state_dict(family, bert4keras_variables(family, dims, seed), dims, with_norm_weights)
    if mutate:
        mutate(state)
    folder = tmp_path / f"b4t-{family}"
    write_bert4torch_folder(folder, family, state, dims)
    if config:
        (folder / "bert4torch_config.json").write_text(json.dumps({**bert4torch_config(family, dims), **config}))
    return folder, state


def _check(model, state, family, **kwargs):
    ids, _ = token_batch(DIMS[family]["vocab_size"])
    return assert_model_matches(model, Bert4TorchWeights(state, family), bert4torch_config(family, DIMS[family]), ids,
                                flavour="bert4keras", eps=1e-7, **kwargs)


@pytest.mark.parametrize("with_norm_weights", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_converted_checkpoint_matches_the_reference(tmp_path, family, with_norm_weights):
    folder, state = _checkpoint(tmp_path, family, with_norm_weights=with_norm_weights)
    result = convert_checkpoint(folder, "bert4torch")
    assert result.record["family"] == family
    assert result.record["tensors"]["copies_checked"] == ["mlmDecoder.weight"]
    assert bool(result.record["tensors"]["constants_checked"]) == with_norm_weights
    _check(result.model, state, family)


def test_stacked_scales_are_q_then_k(tmp_path):
    folder, state = _checkpoint(tmp_path, "gau-alpha")
    model = convert_checkpoint(folder, "bert4torch").model
    gamma = state["encoderLayer.2.gau.offsetscale.gamma"]
    assert torch.equal(model.encoder.layers[2].gau.q_scaleoffset.weight, gamma[0])
    assert torch.equal(model.encoder.layers[2].gau.k_scaleoffset.weight, gamma[1])
    # the comparison above would catch a swap: with rows exchanged the outputs move far from the reference
    swapped = {k: (v.flip(0) if k.endswith("offsetscale.gamma") else v) for k, v in state.items()}
    with pytest.raises(AssertionError):
        _check(convert_checkpoint(folder, "bert4torch").model, swapped, "gau-alpha")


# ------------------------------------------------------------------------------------- bad input


def test_untied_decoder_and_scaled_norms_are_refused(tmp_path):
    def perturb_decoder(state):
        state["mlmDecoder.weight"] = state["mlmDecoder.weight"] * 1.01

    folder, _ = _checkpoint(tmp_path, "roformer-v2", mutate=perturb_decoder)
    with pytest.raises(ConversionError, match="mlmDecoder.weight differs from embeddings.word_embeddings.weight"):
        convert_checkpoint(folder, "bert4torch")

    def learned_scale(state):
        state["encoderLayer.1.ffnLayerNorm.weight"][3] = 1.5

    folder, _ = _checkpoint(tmp_path, "roformer-v2", mutate=learned_scale, with_norm_weights=True)
    with pytest.raises(ConversionError, match="encoderLayer.1.ffnLayerNorm.weight is not all 1"):
        convert_checkpoint(folder, "bert4torch")


def test_junnyu_names_and_v1_checkpoints_are_pointed_elsewhere(tmp_path):
    def junnyu_style(state):
        for key in list(state):
            state["roformer." + key] = state.pop(key)

    def with_bias(state):
        state["encoderLayer.0.multiHeadAttention.q.bias"] = torch.zeros(16)

    folder, _ = _checkpoint(tmp_path, "roformer-v2", mutate=junnyu_style)
    with pytest.raises(ConversionError, match="uses JunnYu's names .*convert it with --from junnyu"):
        convert_checkpoint(folder, "bert4torch")
    folder, _ = _checkpoint(tmp_path, "roformer-v2", mutate=with_bias)
    with pytest.raises(ConversionError, match=r"a BERT / RoFormer \(v1\) checkpoint, not RoFormerV2"):
        convert_checkpoint(folder, "bert4torch")


def test_config_naming_the_other_family_is_refused(tmp_path):
    folder, _ = _checkpoint(tmp_path, "roformer-v2", config={"model": "gau_alpha"})
    with pytest.raises(ConversionError, match="bert4torch_config.json says model='gau_alpha', but .* holds roformer-v2 tensors"):
        convert_checkpoint(folder, "bert4torch")
    folder, _ = _checkpoint(tmp_path, "gau-alpha", config={"model": "bert"})
    with pytest.raises(ConversionError, match="model='bert' is not RoFormerV2 or GAU-α"):
        convert_checkpoint(folder, "bert4torch")


def test_missing_tensor_and_bad_stack_shape_are_named(tmp_path):
    folder, _ = _checkpoint(tmp_path, "gau-alpha", mutate=lambda s: s.pop("encoderLayer.1.gau.o_dense.weight"))
    with pytest.raises(ConversionError, match=r"missing: encoderLayer.1.gau.o_dense.weight"):
        convert_checkpoint(folder, "bert4torch")

    def one_row(state):
        state["encoderLayer.0.gau.offsetscale.gamma"] = state["encoderLayer.0.gau.offsetscale.gamma"][:1]

    folder, _ = _checkpoint(tmp_path, "gau-alpha", mutate=one_row)
    with pytest.raises(ConversionError, match=r"encoderLayer.0.gau.offsetscale.gamma has shape \[1, 8\], but row 1 of a stacked tensor"):
        convert_checkpoint(folder, "bert4torch")
