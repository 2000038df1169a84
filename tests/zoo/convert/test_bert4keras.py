"""bert4keras (Zhuiyi's TensorFlow) checkpoints → our models, checked against bert4keras semantics in fp64."""

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from zoo.convert import BundleError, ConversionError, convert_checkpoint
from zoo.convert.tensor_bundle import data_path, index_path, write_bundle

from .source_checkpoints import DIMS, FIXTURE_SEED, bert4keras_variables, bert_config, token_batch, write_bert4keras_folder
from .source_reference import Bert4KerasWeights, assert_model_matches

FIXTURES = Path(__file__).parent / "fixtures"
K_EPSILON = 1e-7  # bert4keras's norm ε (K.epsilon()), the semantics the checkpoints were trained with
FAMILIES = ["roformer-v2", "gau-alpha"]


def _check(model, variables, family, **kwargs):
    ids, _ = token_batch(DIMS[family]["vocab_size"])
    return assert_model_matches(model, Bert4KerasWeights(variables, family), bert_config(family, DIMS[family]), ids,
                                flavour="bert4keras", eps=K_EPSILON, **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_converted_model_computes_the_bert4keras_forward(tmp_path, family):
    variables = write_bert4keras_folder(tmp_path / "release", family, DIMS[family], seed=1)
    result = convert_checkpoint(tmp_path / "release", "bert4keras", out=tmp_path / "converted")
    assert result.record["family"] == family and result.model.config.layer_norm_eps == K_EPSILON
    assert result.model.lm_head.decoder.weight is result.model.encoder.embeddings.word_embeddings.weight
    _check(result.model, variables, family)
    loaded = zoo.from_pretrained(tmp_path / "converted")  # the written folder is an ordinary model folder
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, result.model.state_dict()[name].float()), name
    record = json.loads((tmp_path / "converted" / "conversion.json").read_text())
    assert set(record["source"]["files"]) == {"bert_model.ckpt.index", "bert_model.ckpt.data-00000-of-00001",
                                              "bert_config.json", "vocab.txt"}
    assert len(record["tensors"]["used"]) == len(variables) and record["tensors"]["ignored"] == {}
    assert zoo.load_tokenizer(tmp_path / "converted").convert_ids_to_tokens([0, 4, 5]) == ["[PAD]", "[MASK]", "一"]


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoints_written_by_tensorflow_convert(family):
    """fixtures/*_tf were saved by TensorFlow's own Saver (see fixtures/make_tf_fixtures.py)."""
    folder = FIXTURES / ("roformer_v2_tf" if family == "roformer-v2" else "gau_alpha_tf")
    result = convert_checkpoint(folder, "bert4keras", reader="pure")
    assert result.record["tensors"]["ignored"] == {"global_step": "training step counter"}
    _check(result.model, bert4keras_variables(family, DIMS[family], FIXTURE_SEED[family]), family)


@pytest.mark.tensorflow
def test_checkpoint_written_with_tensorflow_in_the_test(tmp_path):
    """With the tensorflow extra (`python -m pytest -m tensorflow`): save with its Saver now, read with
    both readers. The default run covers TensorFlow-written files through fixtures/."""
    import tensorflow  # noqa: F401  (selected only where the extra is installed)

    for family in FAMILIES:
        variables = write_bert4keras_folder(tmp_path / family, family, DIMS[family], seed=7, writer="tensorflow")
        pure = convert_checkpoint(tmp_path / family, "bert4keras", reader="pure").model
        theirs = convert_checkpoint(tmp_path / family, "bert4keras", reader="tensorflow").model
        for name, tensor in pure.state_dict().items():
            assert torch.equal(tensor, theirs.state_dict()[name]), name
        _check(pure, variables, family)


def test_softmax_plus_minimum_length_is_an_option(tmp_path):
    """n < 16 in every row here, so bert4keras 0.11.5's max(n, 16) differs from the training-era max(n, 1)."""
    variables = write_bert4keras_folder(tmp_path / "gau", "gau-alpha", DIMS["gau-alpha"], seed=2)
    training_era = convert_checkpoint(tmp_path / "gau", "bert4keras").model
    clamped = convert_checkpoint(tmp_path / "gau", "bert4keras", softmax_plus_min_len=16).model
    assert training_era.config.softmax_plus_min_len == 1 and clamped.config.softmax_plus_min_len == 16
    out_1 = _check(training_era, variables, "gau-alpha", min_len=1)
    out_16 = _check(clamped, variables, "gau-alpha", min_len=16)
    assert (out_1.logits - out_16.logits).abs().max() > 1e-3


def test_release_zip_converts_and_publishes(tmp_path, registry):
    variables = write_bert4keras_folder(tmp_path / "chinese_roformer-v2-char_L-2_H-16_A-2", "roformer-v2",
                                        DIMS["roformer-v2"], seed=3)
    archive = tmp_path / "chinese_roformer-v2-char_L-2_H-16_A-2.zip"
    with zipfile.ZipFile(archive, "w") as bundle:  # the releases nest everything in one folder
        for file in sorted((tmp_path / "chinese_roformer-v2-char_L-2_H-16_A-2").iterdir()):
            bundle.write(file, f"chinese_roformer-v2-char_L-2_H-16_A-2/{file.name}")
    result = convert_checkpoint(archive, "bert4keras", publish="tiny-roformer-zh@zhuiyi")
    assert result.ref == "tiny-roformer-zh@zhuiyi"
    assert archive.name in result.record["source"]["files"]
    loaded = zoo.from_pretrained("tiny-roformer-zh")
    _check(loaded, variables, "roformer-v2")
    readme = (Path(zoo.list_models()[0]["path"]) / "README.md").read_text()
    assert "## Provenance" in readme and result.record["source"]["files"][archive.name]["sha256"] in readme
    assert len(zoo.load_tokenizer("tiny-roformer-zh")) == DIMS["roformer-v2"]["vocab_size"]
    with pytest.raises(zoo.RegistryError, match="tiny-roformer-zh@zhuiyi is already published"):
        convert_checkpoint(archive, "bert4keras", publish="tiny-roformer-zh@zhuiyi")


def test_optimizer_state_is_skipped_and_reported(tmp_path):
    variables = bert4keras_variables("roformer-v2", DIMS["roformer-v2"], seed=4)
    extra = {"global_step": np.int64(5), "bert/encoder/layer_0/attention/self/query/kernel/adam_m": np.zeros((16, 16), np.float32)}
    write_bert4keras_folder(tmp_path / "r", "roformer-v2", DIMS["roformer-v2"], seed=4, variables={**variables, **extra})
    result = convert_checkpoint(tmp_path / "r", "bert4keras")
    assert result.record["tensors"]["ignored"] == {
        "bert/encoder/layer_0/attention/self/query/kernel/adam_m": "optimizer slot", "global_step": "training step counter"}
    _check(result.model, variables, "roformer-v2")


# ------------------------------------------------------------------------------------- bad input


def _folder(tmp_path, family="roformer-v2", mutate=None, config=None):
    variables = bert4keras_variables(family, DIMS[family], seed=6)
    if mutate:
        mutate(variables)
    folder = tmp_path / f"bad-{family}"
    write_bert4keras_folder(folder, family, DIMS[family], seed=6, variables=variables)
    if config:
        (folder / "bert_config.json").write_text(json.dumps({**bert_config(family, DIMS[family]), **config}))
    return folder


def test_checkpoint_of_the_other_family_is_refused(tmp_path):
    folder = _folder(tmp_path, "gau-alpha")
    with pytest.raises(ConversionError, match="bert_model.ckpt is a gau-alpha checkpoint, but family='roformer-v2'"):
        convert_checkpoint(folder, "bert4keras", family="roformer-v2", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bert_or_roformer_v1_checkpoint_is_refused(tmp_path):
    def add_v1_variables(v):
        v["bert/encoder/layer_0/attention/self/query/bias"] = np.zeros(16, np.float32)
        v["bert/encoder/layer_0/attention/output/LayerNorm/gamma"] = np.ones(16, np.float32)

    with pytest.raises(ConversionError, match=r"is a BERT / RoFormer \(v1\) checkpoint, not RoFormerV2"):
        convert_checkpoint(_folder(tmp_path, mutate=add_v1_variables), "bert4keras")


def test_missing_variable_is_named_and_nothing_is_written(tmp_path):
    folder = _folder(tmp_path, mutate=lambda v: v.pop("bert/encoder/layer_1/output/dense/kernel"))
    with pytest.raises(ConversionError, match=r"1 expected tensor\(s\) missing: bert/encoder/layer_1/output/dense/kernel"):
        convert_checkpoint(folder, "bert4keras", out=tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_leftover_layers_point_at_the_config(tmp_path):
    folder = _folder(tmp_path, config={"num_hidden_layers": 1})
    with pytest.raises(ConversionError, match=r"nothing uses: bert/encoder/layer_1/.*"
                                              r"the checkpoint has layers up to 1 but the config says num_hidden_layers=1"):
        convert_checkpoint(folder, "bert4keras")


def test_shape_mismatch_names_variable_and_shapes(tmp_path):
    folder = _folder(tmp_path, config={"intermediate_size": 48})
    with pytest.raises(ConversionError, match=r"shape mismatch .* bert/encoder/layer_0/intermediate/dense/kernel has "
                                              r"shape \[16, 32\], expected \[16, 48\] for encoder\.layers\.0\.ffn\.fc1\.weight"):
        convert_checkpoint(folder, "bert4keras")


def test_truncated_checkpoint_files_are_named(tmp_path):
    folder = _folder(tmp_path)
    shard = data_path(folder / "bert_model.ckpt", 0, 1)
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(BundleError, match=r"data-00000-of-00001 is truncated: 'bert/embeddings/word_embeddings' needs bytes \[128, 2688\)"):
        convert_checkpoint(folder, "bert4keras")
    index = index_path(folder / "bert_model.ckpt")
    index.write_bytes(index.read_bytes()[:-20])
    with pytest.raises(BundleError, match="bert_model.ckpt.index is truncated or not a TensorFlow checkpoint index"):
        convert_checkpoint(folder, "bert4keras")


def test_truncated_zip_is_named(tmp_path):
    archive = tmp_path / "release.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("a/bert_config.json", "{}")
    archive.write_bytes(archive.read_bytes()[:30])
    with pytest.raises(ConversionError, match="release.zip is truncated or not a zip archive"):
        convert_checkpoint(archive, "bert4keras")


def test_config_and_vocabulary_errors_name_the_file(tmp_path):
    folder = _folder(tmp_path)
    (folder / "bert_config.json").write_text('{"hidden_size": 16,')
    with pytest.raises(ConversionError, match="bert_config.json is not valid JSON"):
        convert_checkpoint(folder, "bert4keras")
    config = bert_config("roformer-v2", DIMS["roformer-v2"])
    del config["num_attention_heads"]
    (folder / "bert_config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="bert_config.json lacks 'num_attention_heads'"):
        convert_checkpoint(folder, "bert4keras")
    (folder / "bert_config.json").write_text(json.dumps({**config, "num_attention_heads": 2, "hidden_act": "mish"}))
    with pytest.raises(ConversionError, match=r"bert_config.json: RoFormerV2Config.hidden_act='mish' is not one of"):
        convert_checkpoint(folder, "bert4keras")
    (folder / "bert_config.json").write_text(json.dumps({**config, "num_attention_heads": 2}))
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(vocab.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(ConversionError, match="vocab.txt has 39 tokens but .*bert_config.json says vocab_size=40"):
        convert_checkpoint(folder, "bert4keras")
    vocab.unlink()
    with pytest.raises(FileNotFoundError, match="no vocab.txt next to"):
        convert_checkpoint(folder, "bert4keras")


def test_existing_output_is_never_overwritten_by_default(tmp_path):
    folder = _folder(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty; pass overwrite=True"):
        convert_checkpoint(folder, "bert4keras", out=out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    convert_checkpoint(folder, "bert4keras", out=out, overwrite=True)
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_checkpoint_prefix_can_be_given_directly(tmp_path):
    folder = _folder(tmp_path)
    shutil.move(folder / "checkpoint", tmp_path / "unused-state-file")
    variables = bert4keras_variables("roformer-v2", DIMS["roformer-v2"], seed=6)
    _check(convert_checkpoint(folder / "bert_model.ckpt", "bert4keras").model, variables, "roformer-v2")
    write_bundle(folder / "other.ckpt", variables)  # two checkpoints in one folder: the folder is ambiguous
    with pytest.raises(FileNotFoundError, match="holds 2 checkpoints"):
        convert_checkpoint(folder, "bert4keras")
