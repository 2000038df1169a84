"""JunnYu's PyTorch ports → our models (checked against the ports' semantics in fp64), and back."""

import copy
import datetime
import json

import pytest
import torch
from safetensors.torch import load_file

import zoo
from zoo.convert import ConversionError, convert_checkpoint, export_junnyu

from .source_checkpoints import (DIMS, bert4keras_variables, junnyu_config, junnyu_state_dict, token_batch,
                                 vocab_tokens, write_junnyu_folder)
from .source_reference import JunnYuWeights, assert_model_matches

FAMILIES = ["roformer-v2", "gau-alpha"]


def _port(tmp_path, family, weights="bin", seed=1, mutate=None, config=None):
    dims = DIMS[family]
    state = junnyu_state_dict(family, bert4keras_variables(family, dims, seed), dims)
    if mutate:
        mutate(state)
    folder = tmp_path / f"junnyu-{family}-{weights}"
    write_junnyu_folder(folder, family, state, dims, weights=weights)
    if config:
        (folder / "config.json").write_text(json.dumps({**junnyu_config(family, dims), **config}))
    return folder, state


def _check(model, state, family, eps):
    ids, _ = token_batch(DIMS[family]["vocab_size"])
    return assert_model_matches(model, JunnYuWeights(state, family), junnyu_config(family, DIMS[family]), ids,
                                flavour="junnyu", eps=eps)


@pytest.mark.parametrize("weights", ["bin", "safetensors"])
@pytest.mark.parametrize("family", FAMILIES)
def test_converted_port_computes_the_ports_forward(tmp_path, family, weights):
    folder, state = _port(tmp_path, family, weights)
    # ε as the port's config.json states it (1e-12): the port's own numbers
    as_port = convert_checkpoint(folder, "junnyu", layer_norm_eps="config")
    assert as_port.model.config.layer_norm_eps == 1e-12
    _check(as_port.model, state, family, eps=1e-12)
    ignored = {"roformer.encoder.embed_positions.weight"} if family == "roformer-v2" else set()
    assert set(as_port.record["tensors"]["ignored"]) == ignored
    assert as_port.record["tensors"]["copies_checked"] == ["cls.predictions.decoder.weight"]
    # default: bert4keras's K.epsilon(), the semantics the weights were trained with
    default = convert_checkpoint(folder, "junnyu")
    assert default.model.config.layer_norm_eps == 1e-7
    _check(default.model, state, family, eps=1e-7)


def test_bare_model_state_dict_without_prefix_converts(tmp_path):
    def strip_prefix(state):
        for key in list(state):
            if key.startswith("roformer."):
                state[key.removeprefix("roformer.")] = state.pop(key)
        del state["cls.predictions.decoder.weight"]

    folder, state = _port(tmp_path, "roformer-v2", mutate=strip_prefix)
    model = convert_checkpoint(folder, "junnyu").model
    assert torch.equal(model.encoder.layers[1].ffn.fc2.weight, state["encoder.layer.1.output.dense.weight"])


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_ours_to_junnyu_to_ours_is_bit_identical(tmp_path, family):
    dims = DIMS[family]
    ours = zoo.create("roformer-v2-mini" if family == "roformer-v2" else "gau-alpha-mini", **dims).eval()
    with torch.no_grad():  # trained-looking weights: scales away from their init of 1
        for module in ours.modules():
            if hasattr(module, "weight") and module.weight is not None and module.weight.dim() == 1:
                module.weight.mul_(1 + 0.3 * torch.randn_like(module.weight))
    tokenizer = zoo.tokenizer_from_vocab(vocab_tokens(dims["vocab_size"]))
    out = export_junnyu(ours, tmp_path / "port", tokenizer=tokenizer)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer_config.json", "vocab.txt"]
    # the files hold JunnYu's names (as the spec's table gives them), in both formats
    expected = junnyu_state_dict(family, bert4keras_variables(family, dims, 0), dims)
    expected.pop("roformer.encoder.embed_positions.weight", None)
    pickled = torch.load(out / "pytorch_model.bin", weights_only=True)
    assert {k: tuple(v.shape) for k, v in pickled.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    safetensors = load_file(out / "model.safetensors")
    assert all(torch.equal(safetensors[k], v) for k, v in pickled.items())
    # the port's forward over the exported files equals our model's
    _check(copy.deepcopy(ours), pickled, family, eps=ours.config.layer_norm_eps)
    back = convert_checkpoint(out, "junnyu").model
    assert back.state_dict().keys() == ours.state_dict().keys()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    ids, mask = token_batch(dims["vocab_size"])
    with torch.no_grad():
        a = ours(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
        b = back(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
    assert torch.equal(a, b)
    for key in ("layer_norm_eps", "softmax_plus_min_len", "attention_normalization", "hidden_act", "num_hidden_layers"):
        assert getattr(back.config, key) == getattr(ours.config, key), key


def test_export_refuses_what_the_ports_cannot_express(tmp_path):
    clamped = zoo.create("gau-alpha-mini", vocab_size=40, softmax_plus_min_len=16)
    with pytest.raises(ValueError, match="config.softmax_plus_min_len=16, the port implements only 1"):
        export_junnyu(clamped, tmp_path / "a")
    with pytest.raises(ValueError, match="JunnYu's ports cover RoFormerV2 and GAU-α, not deepnet"):
        export_junnyu(zoo.create("deepnet-mini", vocab_size=40), tmp_path / "b")
    classifier = zoo.create("roformer-v2-mini", "sequence-classification", vocab_size=40, num_labels=3)
    with pytest.raises(ValueError, match=r"task-head parameters \(classifier.bias, classifier.weight\).*export `model.encoder`"):
        export_junnyu(classifier, tmp_path / "b")
    export_junnyu(classifier.encoder, tmp_path / "encoder-only")
    assert (tmp_path / "encoder-only" / "model.safetensors").is_file()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty"):
        export_junnyu(zoo.create("roformer-v2-mini", vocab_size=40), tmp_path / "c")
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["x"]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------- bad input


def test_roformer_v1_and_other_model_types_are_refused(tmp_path):
    folder, _ = _port(tmp_path, "roformer-v2", config={"norm_type": "layer_norm", "use_bias": True})
    with pytest.raises(ConversionError, match=r"config.json describes RoFormer v1 \(norm_type='layer_norm', use_bias=True\)"):
        convert_checkpoint(folder, "junnyu")
    folder, _ = _port(tmp_path, "roformer-v2", config={"model_type": "bert"})
    with pytest.raises(ConversionError, match="model_type='bert' is neither JunnYu's 'roformer' \\(V2\\) nor 'gau_alpha'"):
        convert_checkpoint(folder, "junnyu")


def test_config_of_the_other_family_is_refused(tmp_path):
    folder, _ = _port(tmp_path, "roformer-v2", config={"model_type": "gau_alpha"})
    with pytest.raises(ConversionError, match="config.json says gau-alpha, but the weights in .*pytorch_model.bin are roformer-v2"):
        convert_checkpoint(folder, "junnyu")
    folder, _ = _port(tmp_path, "gau-alpha")
    with pytest.raises(ConversionError, match="is a gau-alpha checkpoint, but family='roformer-v2' was asked for"):
        convert_checkpoint(folder, "junnyu", family="roformer-v2")


def test_untied_decoder_is_refused(tmp_path):
    def perturb(state):
        state["cls.predictions.decoder.weight"] = state["cls.predictions.decoder.weight"] + 1e-3

    folder, _ = _port(tmp_path, "gau-alpha", mutate=perturb)
    with pytest.raises(ConversionError, match="cls.predictions.decoder.weight differs from gau_alpha.embeddings.word_embeddings.weight"):
        convert_checkpoint(folder, "junnyu")


def test_task_heads_and_missing_tensors_are_listed(tmp_path):
    def add_head(state):
        state["classifier.dense.weight"] = torch.zeros(16, 16)
        del state["roformer.encoder.layer.0.attention.self.key.weight"]

    folder, _ = _port(tmp_path, "roformer-v2", mutate=add_head)
    with pytest.raises(ConversionError, match=r"1 expected tensor\(s\) missing: roformer.encoder.layer.0.attention.self.key.weight; "
                                              r"1 tensor\(s\) in the checkpoint that nothing uses: classifier.dense.weight"):
        convert_checkpoint(folder, "junnyu")


def test_shape_mismatch_is_named(tmp_path):
    folder, _ = _port(tmp_path, "gau-alpha", config={"attention_key_size": 4})
    with pytest.raises(ConversionError, match=r"gau.q_scaleoffset.weight has shape \[8\], expected \[4\]"):
        convert_checkpoint(folder, "junnyu")


def test_truncated_and_unsafe_pickles_are_refused(tmp_path):
    folder, _ = _port(tmp_path, "roformer-v2")
    weights = folder / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:2000])
    with pytest.raises(ConversionError, match="pytorch_model.bin is truncated or not a PyTorch checkpoint"):
        convert_checkpoint(folder, "junnyu")
    torch.save({"roformer.embeddings.word_embeddings.weight": torch.zeros(2), "when": datetime.datetime(2022, 3, 21)}, weights)
    with pytest.raises(ConversionError, match="refusing to load .*pytorch_model.bin: it holds objects other than tensors"):
        convert_checkpoint(folder, "junnyu")
    folder, _ = _port(tmp_path, "gau-alpha", weights="safetensors")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ConversionError, match="model.safetensors is truncated or not a safetensors file"):
        convert_checkpoint(folder, "junnyu")


def test_port_semantics_we_cannot_reproduce_are_refused(tmp_path):
    folder, _ = _port(tmp_path, "roformer-v2", config={"rotary_value": True})
    with pytest.raises(ConversionError, match=r"rotary_value=true \(RoPE on V\)"):
        convert_checkpoint(folder, "junnyu")
    folder, _ = _port(tmp_path, "gau-alpha", config={"attention_scale": False})
    with pytest.raises(ConversionError, match="attention_scale=false"):
        convert_checkpoint(folder, "junnyu")
