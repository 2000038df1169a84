"""Round trips (save/load, publish/from_pretrained, Auto classes) and the errors bad input gets."""

import hashlib
import json
import os
import shutil

import pytest
import torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

import zoo
from zoo.families import TASKS, model_class
from zoo.registry import Registry

from .test_models import SMALL, batch, make_config, randomize

HEAD_TASKS = [t for t in TASKS]


def _inputs(task, ids, mask):
    if task == "multiple-choice":
        return {"input_ids": torch.stack([ids, ids.flip(0)], 1), "attention_mask": torch.stack([mask, mask.flip(0)], 1)}
    return {"input_ids": ids, "attention_mask": mask}


def _outputs(out):
    return [v for v in out.values() if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("family", list(SMALL))
@pytest.mark.parametrize("task", HEAD_TASKS)
def test_save_load_bit_identical_for_every_head(tmp_path, family, task):
    config = make_config(family, num_labels=3)
    model = randomize(model_class(config, task)(config)).eval()
    ids, mask = batch()
    before = _outputs(model(**_inputs(task, ids, mask)))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = zoo.from_pretrained(tmp_path, task=task).eval()
    assert type(loaded) is type(model)
    after = _outputs(loaded(**_inputs(task, ids, mask)))
    assert len(before) == len(after) > 0
    for a, b in zip(before, after):
        assert torch.equal(a, b)


@pytest.mark.parametrize("family", list(SMALL))
def test_tied_embeddings_survive_save_load(tmp_path, family):
    config = make_config(family)
    model = model_class(config, "masked-lm")(config)
    assert model.lm_head.decoder.weight is model.encoder.embeddings.word_embeddings.weight
    model.save_pretrained(tmp_path)
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert loaded.lm_head.decoder.weight is loaded.encoder.embeddings.word_embeddings.weight
    # a step on the embedding moves the output projection too
    with torch.no_grad():
        loaded.encoder.embeddings.word_embeddings.weight.add_(1.0)
    assert torch.equal(loaded.lm_head.decoder.weight, loaded.encoder.embeddings.word_embeddings.weight)


def test_auto_classes_load_our_folders(tmp_path):
    for family in SMALL:
        config = make_config(family)
        model = randomize(model_class(config, "masked-lm")(config)).eval()
        folder = tmp_path / family
        model.save_pretrained(folder)
        auto = AutoModelForMaskedLM.from_pretrained(folder).eval()
        assert type(auto) is type(model)
        ids, mask = batch()
        assert torch.equal(auto(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)
        base = AutoModel.from_pretrained(folder).eval()
        assert torch.equal(base(ids, attention_mask=mask).last_hidden_state,
                           model.encoder(ids, attention_mask=mask).last_hidden_state)


def test_publish_then_load_by_name_and_version(registry):
    model = zoo.create("roformer-v2-mini").eval()
    tokenizer = zoo.default_tokenizer()
    assert zoo.publish(model, tokenizer, name="mini", version="1.0", metrics={"heldout/mlm_accuracy": 0.25}) == "mini@1.0"
    ids = torch.tensor([tokenizer("今天天气很好")["input_ids"]])
    expected = model(ids).logits
    for ref in ("mini", "mini@1.0"):
        loaded = zoo.from_pretrained(ref).eval()
        assert torch.equal(loaded(ids).logits, expected)
        assert loaded.zoo_ref == "mini@1.0"
    assert zoo.load_tokenizer("mini")("今天天气很好")["input_ids"] == ids[0].tolist()
    (row,) = zoo.list_models()
    assert (row["name"], row["version"], row["family"]) == ("mini", "1.0", "roformer-v2")
    assert row["metrics"] == {"heldout/mlm_accuracy": 0.25}
    card = (Registry().resolve("mini").path / "README.md").read_text()
    assert "mlm_accuracy" in card and "model-index" in card
    # a second version becomes the default; the first stays loadable
    zoo.publish(zoo.create("roformer-v2-mini"), name="mini", version="1.1")
    assert zoo.from_pretrained("mini").zoo_ref == "mini@1.1"
    assert torch.equal(zoo.from_pretrained("mini@1.0").eval()(ids).logits, expected)


def test_registry_is_a_hub_cache_that_transformers_reads_offline(registry, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = zoo.create("gau-alpha-mini").eval()
    zoo.publish(model, name="gau", version="2.0")
    auto = AutoModelForMaskedLM.from_pretrained("zoo/gau", revision="2.0", cache_dir=registry).eval()
    ids = torch.randint(1, 12000, (1, 12))
    assert torch.equal(auto(ids).logits, model(ids).logits)
    assert len(AutoTokenizer.from_pretrained("zoo/gau", cache_dir=registry)) == 12000


def _blob_of(entry, filename):
    return (entry.path / filename).resolve()


def test_tampered_weights_are_refused(registry):
    zoo.publish(zoo.create("roformer-v2-mini"), name="m", version="1")
    entry = Registry().resolve("m")
    blob = _blob_of(entry, "model.safetensors")
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(zoo.IntegrityError, match="model.safetensors does not match its sha256"):
        zoo.from_pretrained("m")


def test_truncated_and_missing_files_are_refused(registry):
    zoo.publish(zoo.create("roformer-v2-mini"), name="m", version="1")
    entry = Registry().resolve("m")
    blob = _blob_of(entry, "model.safetensors")
    blob.write_bytes(blob.read_bytes()[:100])
    with pytest.raises(zoo.IntegrityError, match="model.safetensors has 100 bytes"):
        zoo.from_pretrained("m")
    zoo.publish(zoo.create("roformer-v2-mini"), name="n", version="1")
    (Registry().resolve("n").path / "config.json").unlink()
    with pytest.raises(zoo.IntegrityError, match="file config.json is missing"):
        zoo.from_pretrained("n")


def test_edited_manifest_and_extra_files_are_refused(registry):
    zoo.publish(zoo.create("roformer-v2-mini"), name="m", version="1")
    path = Registry().resolve("m").path
    (path / "extra.bin").write_bytes(b"x")
    with pytest.raises(zoo.IntegrityError, match="not in the manifest: extra.bin"):
        zoo.from_pretrained("m")
    (path / "extra.bin").unlink()
    manifest_blob = (path / "zoo_manifest.json").resolve()
    manifest = json.loads(manifest_blob.read_text())
    manifest["files"]["config.json"]["size"] += 1
    manifest_blob.write_text(json.dumps(manifest))
    with pytest.raises(zoo.IntegrityError, match="manifest .* was modified"):
        zoo.from_pretrained("m")


def test_unknown_name_lists_close_matches(registry):
    zoo.publish(zoo.create("roformer-v2-mini"), name="roformer-small-zh", version="1")
    with pytest.raises(zoo.ModelNotFoundError, match="did you mean: roformer-small-zh"):
        zoo.from_pretrained("roformer-smal-zh")
    with pytest.raises(zoo.ModelNotFoundError, match="no version '9'"):
        zoo.from_pretrained("roformer-small-zh@9")
    with pytest.raises(zoo.ModelNotFoundError, match="is a preset"):
        zoo.from_pretrained("roformer-v2-tiny")


def test_keywords_go_to_the_config_or_the_loader(tmp_path):
    """A config field goes to the config; anything else to transformers' loader (device_map's companions
    `max_memory`, `offload_folder`, ...; here `use_safetensors=False`, which has it look for a
    pytorch_model.bin that is not there), where zoo.from_pretrained used to drop it without a word; a
    keyword neither takes is refused by name."""
    zoo.create("roformer-v2-tiny").save_pretrained(tmp_path / "m")
    model = zoo.from_pretrained(tmp_path / "m", hidden_dropout_prob=0.0)
    assert model.config.hidden_dropout_prob == 0.0
    with pytest.raises(OSError, match="pytorch_model.bin"):
        zoo.from_pretrained(tmp_path / "m", use_safetensors=False)
    with pytest.raises(TypeError, match="hiden_dropout_prob"):
        zoo.from_pretrained(tmp_path / "m", hiden_dropout_prob=0.0)


@pytest.mark.parametrize("preset", ["roformer-v2-tiny", "gau-alpha-tiny"])
def test_a_layer_offloaded_by_device_map_gives_the_same_logits(tmp_path, preset):
    """device_map with the first layer on "disk" (accelerate keeps its weights on "meta" and brings them
    in around the layer's own forward passes): the logits are the model's in memory, to the bit. The
    one q/k/v product read the meta weights, uninitialised memory (logits off by ~0.4, no error), and
    `offload_folder` never reached the loader."""
    model = zoo.create(preset).eval()
    model.save_pretrained(tmp_path / "m")
    ids = torch.randint(104, 12000, (2, 10), generator=torch.Generator().manual_seed(0))
    layers = {f"encoder.layers.{i}": "disk" if i == 0 else "cpu" for i in range(model.config.num_hidden_layers)}
    device_map = {"encoder.embeddings": "cpu", **layers, "lm_head": "cpu"}
    offloaded = zoo.from_pretrained(tmp_path / "m", device_map=device_map, offload_folder=tmp_path / "offload")
    assert any(p.device.type == "meta" for p in offloaded.encoder.layers[0].parameters())
    with torch.no_grad():
        assert torch.equal(offloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_config_weights_shape_mismatch_is_named(tmp_path):
    zoo.create("roformer-v2-mini").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 256
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"encoder.layers.0.ffn.fc1.weight is \[512, 128\] in the weights but \[256, 128\]"):
        zoo.from_pretrained(tmp_path)
    config["intermediate_size"], config["num_hidden_layers"] = 512, 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="encoder.layers.2.self_attn.q_proj.weight is missing"):
        zoo.from_pretrained(tmp_path)


def test_duplicate_publish_is_refused_and_leaves_the_version_intact(registry):
    model = zoo.create("roformer-v2-mini")
    zoo.publish(model, name="m", version="1")
    before = {p: p.read_bytes() for p in sorted(registry.rglob("*")) if p.is_file()}
    with pytest.raises(zoo.RegistryError, match="already published"):
        zoo.publish(zoo.create("roformer-v2-mini"), name="m", version="1")
    after = {p: p.read_bytes() for p in sorted(registry.rglob("*")) if p.is_file()}
    assert before == after
    Registry().resolve("m", "1")  # still verifies


def test_crash_during_publish_leaves_no_version(registry, monkeypatch):
    real_link = os.link

    def crash(src, dst, **kwargs):  # the version's ref, the commit point (staging locks are links too)
        if os.path.basename(os.path.dirname(dst)) == "refs":
            raise OSError("disk full")
        return real_link(src, dst, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "link", crash)
        with pytest.raises(OSError, match="disk full"):
            zoo.publish(zoo.create("roformer-v2-mini"), name="m", version="1")
    assert zoo.list_models(registry) == []
    assert not [p for p in registry.rglob("*") if p.name.startswith((".publish-", ".stage-"))]
    zoo.publish(zoo.create("roformer-v2-mini"), name="m", version="1")  # the retry succeeds
    assert [r["version"] for r in zoo.list_models()] == ["1"]


def test_invalid_names_are_refused(registry):
    with pytest.raises(zoo.RegistryError, match="invalid model name"):
        zoo.publish(zoo.create("roformer-v2-mini"), name="My Model", version="1")
    with pytest.raises(zoo.RegistryError, match="invalid version"):
        zoo.publish(zoo.create("roformer-v2-mini"), name="m", version="main")


def test_sharded_publish_round_trips(registry):
    model = zoo.create("roformer-v2-mini").eval()
    zoo.publish(model, name="sharded", version="1", max_shard_size="1MB")
    path = Registry().resolve("sharded").path
    assert (path / "model.safetensors.index.json").is_file()
    assert len(list(path.glob("model-*.safetensors"))) > 1
    ids = torch.randint(1, 12000, (1, 8))
    assert torch.equal(zoo.from_pretrained("sharded").eval()(ids).logits, model(ids).logits)


def test_folder_with_manifest_is_verified(registry, tmp_path):
    zoo.publish(zoo.create("roformer-v2-mini"), name="m", version="1")
    copy = tmp_path / "copy"
    shutil.copytree(Registry().resolve("m").path, copy)  # follows the symlinks
    zoo.from_pretrained(copy)
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("128", "129", 1))
    with pytest.raises(zoo.IntegrityError, match="config.json"):
        zoo.from_pretrained(copy)


def test_a_bad_or_duplicate_version_is_refused_before_the_model_is_saved(registry, monkeypatch):
    sweeps = []
    sweep = Registry._collect_garbage_quietly
    monkeypatch.setattr(Registry, "_collect_garbage_quietly", lambda self: sweeps.append(self) or sweep(self))
    model = zoo.create("roformer-v2-mini")
    zoo.publish(model, name="m", version="1")
    assert len(sweeps) == 1  # once per publish, not again for the staging folder publish_folder opens inside

    def save_pretrained(*args, **kwargs):
        raise AssertionError("the model was saved before its name and version were checked")

    monkeypatch.setattr(type(model), "save_pretrained", save_pretrained)
    for name, version, message in [("m", "1", "m@1 is already published"), ("m", "main", "invalid version 'main'"),
                                   ("m", None, "invalid version None"), ("M", "2", "invalid model name 'M'"),
                                   ("m@x", "2", "invalid model name 'm@x'")]:
        with pytest.raises(zoo.RegistryError, match=message):
            zoo.publish(model, name=name, version=version)
    assert Registry().versions("m") == ["1"]
    assert not [p for p in registry.rglob("*") if p.name.startswith((".stage-", ".publish-"))]


def tiny_png(path, width=4, height=3):
    """The first bytes of a PNG (signature and IHDR): all `collect_figures` reads."""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR" + width.to_bytes(4, "big")
                     + height.to_bytes(4, "big") + bytes(5))
    return path


def test_figure_titles_that_lose_characters_are_stored_under_a_hash_of_the_title(tmp_path):
    from zoo.publishing import collect_figures
    from zoo.site.build import FIGURE_FILE

    png = tiny_png(tmp_path / "a.png")
    titles = ["训练损失", "验证准确率", "loss 曲线", "training curves", "Loss (log)", "!!!", "x" * 100]
    files = [figure["file"] for figure in collect_figures({title: png for title in titles})]

    def sha(title):
        return hashlib.sha1(title.encode("utf-8")).hexdigest()[:8]

    assert files == [f"figure-{sha('训练损失')}.png", f"figure-{sha('验证准确率')}.png", f"figure-loss-{sha('loss 曲线')}.png",
                     "figure-training-curves.png", "figure-loss-log.png", f"figure-{sha('!!!')}.png",
                     f"figure-{'x' * 80}-{sha('x' * 100)}.png"]
    assert all(FIGURE_FILE.match(file) for file in files)  # the site shows them


def test_cli_metric_that_is_not_a_number_is_a_usage_error(registry, tmp_path, capsys):
    from zoo.__main__ import main

    folder = tmp_path / "saved"
    zoo.create("roformer-v2-mini").save_pretrained(folder)
    assert main(["publish", str(folder), "--name", "m", "--version", "1", "--metric", "heldout/acc=abc"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == "zoo publish: error: --metric heldout/acc: 'abc' is not a number"
    assert Registry().versions("m") == []
