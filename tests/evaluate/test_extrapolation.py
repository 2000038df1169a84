"""`python -m evaluate extrapolation`: test windows, masks, metrics and the command's outputs.

Models are tiny RoFormerV2 encoders with O(1) random weights (sharp, position-sensitive attention),
so variants really change predictions while a command runs in seconds.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zoo
from evaluate.extrapolation import data, scoring
from evaluate.extrapolation.cli import main, parse_lengths
from pretrain.masking import IGNORE
from zoo.positions import variant

from ..zoo.test_models import randomize

N = 8
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
PNG = b"\x89PNG\r\n\x1a\n"


def tiny_model(preset="roformer-v2-mini", **overrides):
    return randomize(zoo.create(preset, **{**TINY, **overrides}), seed=3).eval()


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_model().save_pretrained(folder)
    zoo.default_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer():
    return zoo.default_tokenizer()


@pytest.fixture(scope="module")
def stream(tokenizer):
    documents, description = data.read_documents("embedded")
    return data.token_stream(documents[:300], tokenizer, description=description)


@pytest.fixture(scope="module")
def policy(tokenizer):
    return data.masking_policy(tokenizer, 12000)


# ------------------------------------------------------------------------------ windows and masks


def test_stream_is_packed_like_pretraining(tokenizer):
    docs = ["今天天气很好。", "我们去公园散步吧"]
    stream = data.token_stream(docs, tokenizer)
    expected = []
    for doc in docs:
        expected += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    assert stream.ids.tolist() == expected
    assert stream.cls_id == 101 and stream.sep_id == 102


def test_natural_windows_and_masks(stream, policy):
    plan = data.make_plan(stream, N, [8, 32], max_tokens=640)
    for length in (8, 32):
        ts = data.natural_set(stream, length, plan, policy, seed=0)
        count = ts.input_ids.shape[0]
        assert count == 640 // length  # the same token budget at every length
        body = length - 2
        for m in (0, count - 1):
            original = np.concatenate([[101], stream.ids[m * body : (m + 1) * body], [102]])
            unmasked = ts.labels[m] == IGNORE
            assert (ts.input_ids[m][unmasked] == original[unmasked]).all()
            assert (ts.labels[m][~unmasked] == original[~unmasked]).all()
        assert not (ts.labels[:, [0, -1]] != IGNORE).any()  # [CLS]/[SEP] are never targets
        chosen = ts.labels != IGNORE
        assert chosen.any(-1).all()  # pretraining's policy: at least one target per window
        if length == 32:  # long enough for the rates to show (at L = 8 the one-target floor inflates them)
            assert 0.10 < chosen.sum() / (ts.labels.size - 2 * count) < 0.20  # 15 %
            assert 0.7 < (ts.input_ids[chosen] == 103).mean() < 0.9  # 80 % [MASK]
        again = data.natural_set(stream, length, plan, policy, seed=0)
        assert np.array_equal(again.input_ids, ts.input_ids) and np.array_equal(again.labels, ts.labels)
        other = data.natural_set(stream, length, plan, policy, seed=1)
        assert not np.array_equal(other.labels, ts.labels)


def test_repeated_windows_mask_only_later_copies(stream, policy):
    plan = data.make_plan(stream, N, [32], max_tokens=320)
    ts = data.repeated_set(stream, 32, plan, policy, seed=0)
    chunk = plan.repeat_chunk
    assert chunk == N // 2
    for m in range(ts.input_ids.shape[0]):
        piece = stream.ids[m * chunk : (m + 1) * chunk]
        tiled = np.tile(piece, 8)[:30]
        assert (ts.input_ids[m, 1 : 1 + chunk] == piece).all()  # copy 1 is clean
        assert (ts.labels[m, : 1 + chunk] == IGNORE).all()
        targets = ts.labels[m] != IGNORE
        assert (ts.labels[m][targets] == np.concatenate([[101], tiled, [102]])[targets]).all()
    assert (ts.labels != IGNORE).sum() > 0


def test_fixed_targets_share_masks_across_lengths(stream, policy):
    plan = data.make_plan(stream, N, [8, 16, 64], targets=5)
    starts = data.fixed_target_spans(stream, plan)
    assert len(starts) == 5 and all(b - a >= N - 2 for a, b in zip(starts, starts[1:]))
    sets = {length: data.fixed_target_set(stream, length, plan, policy, seed=0) for length in (8, 16, 64)}
    target = N - 2
    for length, ts in sets.items():
        left = (length - 2 - target) // 2
        inside = slice(1 + left, 1 + left + target)
        # the target span and its masks are those of L = N, wherever the window puts them
        assert np.array_equal(ts.input_ids[:, inside], sets[8].input_ids[:, 1:-1])
        assert np.array_equal(ts.labels[:, inside], sets[8].labels[:, 1:-1])
        outside = np.ones(length, bool)
        outside[inside] = False
        assert (ts.labels[:, outside] == IGNORE).all()
        for m, start in enumerate(starts):  # clean context centred on the target
            context = stream.ids[start - left : start - left + length - 2]
            keep = np.concatenate([[False], np.ones(length - 2, bool), [False]]) & outside
            assert np.array_equal(ts.input_ids[m][keep], np.concatenate([[0], context, [0]])[keep])
    assert (sets[8].labels != IGNORE).sum() > 0


def test_corpus_files_and_errors(tmp_path, tokenizer):
    text = tmp_path / "held.txt"
    text.write_text("第一篇文章。\n\n第二篇文章\n", encoding="utf-8")
    assert data.read_documents(str(text))[0] == ["第一篇文章。", "第二篇文章"]
    jsonl = tmp_path / "held.jsonl"
    jsonl.write_text('{"text": "甲"}\n{"body": "乙"}\n', encoding="utf-8")
    with pytest.raises(data.CorpusError, match=r"held.jsonl:2: no string field 'text'"):
        data.read_documents(str(jsonl))
    with pytest.raises(data.CorpusError, match=r"--corpus: file not found: .*missing.txt"):
        data.read_documents(str(tmp_path / "missing.txt"))
    small = data.token_stream(["短文本"], tokenizer, description="tiny")
    with pytest.raises(data.CorpusError, match=r"\(tiny\) has 4 tokens, fewer than one 64-token window"):
        data.make_plan(small, N, [64])


def test_parse_lengths():
    assert parse_lengths("1,2,4,8,16", 64) == [64, 128, 256, 512, 1024]
    assert parse_lengths("2,1,1.5", 8) == [8, 12, 16]
    with pytest.raises(ValueError, match=r"--lengths: 0.5 × N = 4 must be a whole number of tokens ≥ N = 8"):
        parse_lengths("0.5", 8)
    with pytest.raises(ValueError, match=r"--lengths: 'x' is not a number"):
        parse_lengths("1,x", 8)


# ------------------------------------------------------------------------------ metrics against a direct computation


def planted_test_set(model, test_set, v, position_ids=None):
    """The test set with every other target replaced by the model's own prediction under `v`, so accuracy
    is about 50 % and only a scorer computing exactly that forward pass reproduces it."""
    ids = torch.from_numpy(test_set.input_ids)
    positions = None if position_ids is None else torch.from_numpy(position_ids)
    with torch.no_grad():
        predicted = model(ids, position_ids=positions, position_variant=v).logits.argmax(-1).numpy()
    labels = test_set.labels.copy()
    rows, cols = np.nonzero(labels != IGNORE)
    labels[rows[::2], cols[::2]] = predicted[rows[::2], cols[::2]]
    return data.TestSet(test_set.name, test_set.length, test_set.input_ids, labels)


@pytest.mark.parametrize("name", ["window_half+logn_dagger", "ntk_mixed", "rerope_w4"])
def test_score_matches_direct_computation(name, stream, policy, tokenizer):
    model = tiny_model().double()
    loaded = scoring.LoadedModel(model, tokenizer, "tiny", None)
    plan = data.make_plan(stream, N, [32], max_tokens=32 * 5)
    v = variant(name, N)
    ts = planted_test_set(model, data.natural_set(stream, 32, plan, policy, seed=0), v)
    metrics = scoring.score(loaded, ts, v, bucket_size=N, batch_tokens=64).to_json()

    ids, labels = torch.from_numpy(ts.input_ids), torch.from_numpy(ts.labels)
    with torch.no_grad():
        out = model(ids, position_variant=v, output_attentions=name != "rerope_w4")
        plain = model(ids).logits
    selected = labels != IGNORE
    logits = out.logits[selected]
    correct = logits.argmax(-1) == labels[selected]
    assert 0.4 < correct.double().mean().item() < 0.7
    assert metrics["masked_tokens"] == int(selected.sum())
    assert metrics["accuracy"] == pytest.approx(correct.double().mean().item(), abs=1e-12)
    # the variant matters: plain RoPE predicts differently on these 32-token windows (N = 8)
    assert metrics["accuracy"] > (plain[selected].argmax(-1) == labels[selected]).double().mean().item()
    assert metrics["loss"] == pytest.approx(F.cross_entropy(logits, labels[selected]).item(), rel=1e-9)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-12)
    bucket = selected.nonzero()[:, 1] // N
    for b, value in enumerate(metrics["accuracy_by_bucket"]):
        in_bucket = bucket == b
        assert value == pytest.approx(correct[in_bucket].double().mean().item(), abs=1e-12)
        assert metrics["masked_by_bucket"][b] == int(in_bucket.sum())
    if name != "rerope_w4":  # the library kernel hands out probabilities: entropy from them, per layer
        for layer, probs in enumerate(out.attentions):
            h = -(probs * torch.log(probs.clamp_min(1e-300))).sum(-1)
            assert metrics["entropy_by_layer"][layer] == pytest.approx(h.mean().item(), rel=1e-9)
    assert len(metrics["entropy_by_layer"]) == 2 and metrics["windows"] == 5 and metrics["tokens"] == 160


# ------------------------------------------------------------------------------ the command


def run_cli(tmp_path, *args):
    out = tmp_path / "out"
    code = main([*args, "--out", str(out), "--quiet", "--max-tokens", "256", "--targets", "4"])
    return code, out


def test_command_from_folder(tmp_path, model_folder, capsys):
    variants = "baseline,window_full,ntk,rerope_w2,ntk_mixed+logn_dagger,leaky_rerope_w2_kauto"
    code, out = run_cli(tmp_path, "--model", str(model_folder), "--train-length", str(N), "--lengths", "1,2,4",
                        "--variants", variants)
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and results["train_length"] == N and results["lengths"] == [8, 16, 32]
    assert results["model"]["rope_dim"] == 16 and results["model"]["rope_base"] == 10000.0
    assert results["git"]["commit"] and results["masking"]["seed"] == 0
    assert results["device"] == "cpu"  # where "auto" ran it on this machine, not "auto"
    assert results["sets"] == ["natural", "repeated", "fixed_target"]
    for name, cells in results["results"].items():
        base = cells["baseline"]
        for v in variants.split(","):
            for length in ("8", "16", "32"):
                # identical masks for every variant
                assert cells[v][length]["masked_tokens"] == base[length]["masked_tokens"] > 0
        # at L = N, window_full sees every key and NTK's κ is 1: the same function as the baseline
        for same in ("window_full", "ntk"):
            assert cells[same]["8"]["loss"] == pytest.approx(base["8"]["loss"], rel=1e-6)
        # beyond N they are different computations
        assert cells["ntk"]["32"]["loss"] != pytest.approx(base["32"]["loss"], rel=1e-6)
    assert len(results["results"]["natural"]["baseline"]["32"]["accuracy_by_bucket"]) == 4
    markdown = (out / "results.md").read_text()
    for title in ("natural: masked-token accuracy", "repeated: masked-token accuracy", "fixed_target: masked-token accuracy"):
        assert title in markdown
    assert "| ntk_mixed+logn_dagger |" in markdown and "| masked tokens |" in markdown
    for png in ("accuracy.png", "entropy.png"):
        assert (out / png).read_bytes()[:8] == PNG
    assert "| baseline |" in capsys.readouterr().out
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_command_from_registry_name_with_recorded_length(tmp_path, registry):
    ref = zoo.publish(tiny_model("gau-alpha-mini", attention_key_size=16), name="tiny-gau", version="1.0",
                      card=f"Trained with sequence length {N}.")
    code, out = run_cli(tmp_path, "--model", "tiny-gau", "--lengths", "1,2", "--sets", "natural",
                        "--variants", "baseline,logn_train,rerope_w2")
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["ref"] == ref and results["model"]["family"] == "gau-alpha"
    assert results["train_length"] == N and results["model"]["attention_normalization"] == "softmax_plus"
    cells = results["results"]["natural"]
    # logn_train names the GAU's own softmax_plus: the baseline computation
    assert cells["logn_train"]["16"]["loss"] == pytest.approx(cells["baseline"]["16"]["loss"], rel=1e-9)


@pytest.mark.parametrize("args, message", [
    (["--variants", "baseline,ntk_mixd"], "unknown position variant 'ntk_mixd'"),
    (["--variants", "rerope_w8"], "position variant 'rerope_w8': window 8 is larger than the shortest test length 8"),
    (["--corpus", "/nonexistent/held.txt"], "--corpus: file not found: /nonexistent/held.txt"),
    (["--sets", "natural,shuffled"], "--sets: unknown test set 'shuffled'"),
    (["--lengths", "0.5"], "--lengths: 0.5 × N = 4 must be a whole number"),
])
def test_command_errors_name_the_cause(tmp_path, model_folder, capsys, args, message):
    code, out = run_cli(tmp_path, "--model", str(model_folder), "--train-length", str(N), *args)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing half-written


def test_command_needs_a_train_length(tmp_path, model_folder, capsys):
    code, _ = run_cli(tmp_path, "--model", str(model_folder))
    assert code == 2
    assert "--train-length is needed: the model card in" in capsys.readouterr().err


def test_unknown_model_is_named(tmp_path, registry, capsys):
    code, _ = run_cli(tmp_path, "--model", "no-such-model", "--train-length", "8")
    assert code == 2
    assert "no model 'no-such-model'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["window_half+logn_dagger", "rerope_w4"])
def test_scoring_waits_for_the_device_once_per_batch(name, stream, policy, tokenizer):
    """Per batch the scorer reads its results back once (the cross-entropy sum; the correct flags follow at
    once): the model selects the masked tokens by indices found on the host, and the entropy recorder keeps
    its sums on the device until the cell's figures are read."""
    from ..host_reads import HostReads

    model = tiny_model()
    loaded = scoring.LoadedModel(model, tokenizer, "tiny", None)
    plan = data.make_plan(stream, N, [32], max_tokens=32 * 5)
    test_set = data.natural_set(stream, 32, plan, policy, seed=0)
    with HostReads() as reads:
        metrics = scoring.score(loaded, test_set, variant(name, N), bucket_size=N, batch_tokens=64)
    assert reads.functions == ["score"] * 3  # 5 windows, 2 per batch
    with HostReads() as reads:
        entropy = metrics.to_json()["entropy_by_layer"]
    assert reads.sites and all(site.startswith("zoo/positions/context.py") for site in reads.sites)
    assert len(entropy) == 2 and all(math.isfinite(h) for h in entropy)
