"""`python -m evaluate robustness`: probe positions against their definitions (B.6 item 7) and the command."""

import json

import numpy as np
import pytest

import zoo
from evaluate.extrapolation import data, scoring
from evaluate.robustness import PROBES, main, probe_positions
from zoo.positions import variant

from .test_extrapolation import N, PNG, model_folder, planted_test_set, tiny_model  # noqa: F401  (fixtures)


@pytest.mark.parametrize("name, expected", [
    ("natural", lambda i, L: i),
    ("offset_1", lambda i, L: i + 1),
    ("offset_N", lambda i, L: i + N),
    ("offset_16N", lambda i, L: i + 16 * N),
    ("offset_1e5", lambda i, L: i + 100000),
    ("stride_0.5", lambda i, L: 0.5 * i),
    ("stride_2", lambda i, L: 2 * i),
    ("stride_4", lambda i, L: 4 * i),
    ("uniform_0.5L", lambda i, L: i * (L / 2) / (L - 1)),
    ("uniform_2L", lambda i, L: i * (2 * L) / (L - 1)),
])
def test_deterministic_probes(name, expected):
    L = 32
    got = probe_positions(name, L, 3, N, seed=0)
    i = np.arange(L, dtype=np.float64)
    assert got.shape == (3, L) and got.dtype == np.float64
    np.testing.assert_allclose(got, np.tile(expected(i, L), (3, 1)), rtol=1e-15, atol=1e-12)


@pytest.mark.parametrize("scale", [2, 4])
def test_subset_probe_is_a_sorted_sample_without_replacement(scale):
    L = 32
    got = probe_positions(f"subset_{scale}L", L, 200, N, seed=0)
    assert (got == np.round(got)).all() and got.min() >= 0 and got.max() < scale * L
    assert (np.diff(got, axis=1) > 0).all()  # sorted, distinct
    assert len({tuple(row) for row in got}) == 200  # a fresh sample per window
    assert np.array_equal(got, probe_positions(f"subset_{scale}L", L, 200, N, seed=0))  # seeded
    assert not np.array_equal(got, probe_positions(f"subset_{scale}L", L, 200, N, seed=1))
    # uniform over [0, sL): the mean position is (sL − 1)/2
    assert abs(got.mean() - (scale * L - 1) / 2) < 0.05 * scale * L


def test_jitter_and_span_probes():
    L = 64
    got = probe_positions("jitter", L, 50, N, seed=0)
    offsets = got - np.arange(L)
    assert np.abs(offsets).max() <= 0.5 and abs(offsets.mean()) < 0.02 and offsets.std() > 0.25
    span = probe_positions("uniform_span", L, 2, N, seed=0, train_span=16 * N)
    np.testing.assert_allclose(span[0], np.linspace(0, 16 * N - 1, L))
    with pytest.raises(ValueError, match=r"probe 'uniform_span' needs --train-span"):
        probe_positions("uniform_span", L, 1, N, seed=0)
    with pytest.raises(ValueError, match=r"unknown probe 'offset_2'; probes: natural, offset_1"):
        probe_positions("offset_2", L, 1, N, seed=0)


def test_accuracy_change_against_natural_positions():
    """Targets planted from the model's natural-position predictions (≈ 50 % right): an offset of 1e5
    keeps every prediction (float64 tables), a stride of 4 or random subsets lose many."""
    model = tiny_model()
    tokenizer = zoo.default_tokenizer()
    documents, _ = data.read_documents("embedded")
    stream = data.token_stream(documents[:100], tokenizer)
    policy = data.masking_policy(tokenizer, 12000)
    L = 4 * N
    natural_set = data.natural_set(stream, L, data.make_plan(stream, N, [L], max_tokens=L * 8), policy, seed=0)
    baseline = variant("baseline", N)
    planted = planted_test_set(model, natural_set, baseline)
    loaded = scoring.LoadedModel(model, tokenizer, "tiny", None)

    def accuracy(probe):
        positions = probe_positions(probe, L, 8, N, seed=0)
        return scoring.score(loaded, planted, baseline, N, position_ids=positions).to_json()["accuracy"]

    natural = accuracy("natural")
    assert 0.4 < natural < 0.7
    assert accuracy("offset_1e5") == natural and accuracy("offset_16N") == natural
    assert accuracy("stride_4") < natural - 0.1
    assert accuracy("subset_4L") < natural - 0.1


def test_command(tmp_path, model_folder, capsys):  # noqa: F811
    out = tmp_path / "out"
    code = main(["--model", str(model_folder), "--train-length", str(N), "--lengths", "1,4", "--max-tokens", "256",
                 "--out", str(out), "--quiet"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and results["probes"] == list(PROBES) and results["lengths"] == [8, 32]
    assert results["device"] == "cpu"  # where "auto" ran it on this machine, not "auto"
    cells = results["results"]
    for length in ("8", "32"):
        natural = cells["natural"][length]
        assert natural["masked_tokens"] > 0
        for probe in PROBES:
            entry = cells[probe][length]
            assert entry["masked_tokens"] == natural["masked_tokens"]  # the same masks for every probe
            assert entry["accuracy_change"] == pytest.approx(entry["accuracy"] - natural["accuracy"], abs=1e-15)
        # RoPE is shift-invariant and the tables are built in float64: offsets change (almost) nothing
        for probe in ("offset_1", "offset_N", "offset_16N", "offset_1e5"):
            assert abs(cells[probe][length]["loss_change"]) < 1e-4
            assert abs(cells[probe][length]["accuracy_change"]) <= 1 / natural["masked_tokens"] + 1e-12
        # a stride moves relative positions: the model's predictions change
        assert abs(cells["stride_4"][length]["loss_change"]) > 1e-3
    assert cells["offset_1e5"]["8"]["positions_first"] == [100000.0, 100001.0, 100002.0, 100003.0]
    markdown = (out / "results.md").read_text()
    assert "| offset_1e5 |" in markdown and "masked-token accuracy (%) and change against natural positions" in markdown
    assert (out / "robustness.png").read_bytes()[:8] == PNG
    assert "| jitter |" in capsys.readouterr().out


def test_command_from_registry_name_and_errors(tmp_path, registry, capsys):
    zoo.publish(tiny_model(), name="tiny-rope", version="1.0", card=f"sequence length {N}")
    out = tmp_path / "out"
    code = main(["--model", "tiny-rope@1.0", "--lengths", "1", "--probes", "offset_1e5,uniform_span", "--train-span", "128",
                 "--variant", "ntk", "--max-tokens", "128", "--out", str(out), "--quiet"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["probes"] == ["natural", "offset_1e5", "uniform_span"] and results["variant"] == "ntk"
    assert results["results"]["uniform_span"]["8"]["positions_last"] == 127.0

    learned = tiny_model("deepnet-mini", position_embedding_type="learned", max_position_embeddings=64)
    zoo.publish(learned, name="tiny-learned", version="1.0")
    bad_out = tmp_path / "bad"
    for args, message in [
        (["--model", "tiny-learned", "--train-length", "8"], "position_embedding_type='learned'"),
        (["--model", "tiny-rope", "--probes", "offset_2"], "unknown probe 'offset_2'"),
        (["--model", "tiny-rope", "--variant", "ntk_mixd"], "unknown position variant 'ntk_mixd'"),
        (["--model", "tiny-rope", "--corpus", str(tmp_path / "none.jsonl")], "--corpus: file not found"),
    ]:
        assert main([*args, "--out", str(bad_out), "--quiet"]) == 2
        assert message in capsys.readouterr().err
        assert not bad_out.exists()


@pytest.mark.parametrize("command", ["extrapolation", "robustness"])
def test_the_commands_score_in_ieee_fp32_and_leave_the_callers_settings(command, monkeypatch, tmp_path):
    """Both commands score in fp32 without TF32 (B.6 item 8). They switched TF32 off through torch's
    legacy flags for the rest of the process, even when called from Python and failing at once; after a
    caller's `set_float32_matmul_precision("high")` that left torch's two views of the setting disagreeing
    (`get_float32_matmul_precision` then raises, and torch.compile reads it). Now the caller's setting is
    back afterwards, and inside both views say IEEE fp32."""
    import torch

    import evaluate.extrapolation.cli as extrapolation
    import evaluate.robustness as robustness

    module, main_of = {"extrapolation": (extrapolation, extrapolation.main), "robustness": (robustness, main)}[command]
    seen = []

    def load_model(*args, **kwargs):
        seen.append((torch.backends.cuda.matmul.fp32_precision, torch.get_float32_matmul_precision()))
        raise zoo.errors.ZooError("no model here")

    monkeypatch.setattr(module, "load_model", load_model)
    torch.set_float32_matmul_precision("high")
    try:
        assert main_of(["--model", "tiny@1.0", "--quiet", "--out", str(tmp_path / "out")]) != 0
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cuda.matmul.fp32_precision == "tf32"
    finally:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.fp32_precision = torch.backends.mkldnn.matmul.fp32_precision = "none"
    assert seen == [("ieee", "highest")]
