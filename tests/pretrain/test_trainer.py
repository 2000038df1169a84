"""The DeepSpeed training loop end to end on CPU ranks (gloo): loss, ZeRO stages, SIGKILL + resume,
resume on another number of ranks, export and publish, and the errors that must stop a run early."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import zoo
from pretrain.checkpoint import MARKER, complete_checkpoints, find_checkpoint, prune
from pretrain.metrics import read_metrics
from zoo.corpus import embedded_corpus

from .ranks import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(embedded_corpus("train")[:1500]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def write_recipe(tmp_path, corpus_file, cache_dir, name="run", zero=0, optimizer="lamb", steps=12, dropout=0.1, **extra):
    optimizers = {
        "lamb": {"type": "Lamb", "params": {"lr": 0.01, "weight_decay": 0.01, "bias_correction": False}},
        "adamw": {"type": "AdamW", "params": {"lr": 0.003, "weight_decay": 0.01, "torch_adam": True}},
    }
    recipe = {
        "run_name": name,
        "seed": 5,
        "model": {"preset": "roformer-v2-mini",
                  "config": {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}},
        "data": {"sources": [{"type": "text", "path": str(corpus_file)}], "seq_len": 32, "cache_dir": str(cache_dir),
                 "heldout": {"fraction": 0.05, "max_sequences": 32}},
        "training": {"steps": steps, "lr_schedule": {"type": "warmup_linear", "warmup": 2, "final": 0.5},
                     "eval_every": 6, "checkpoint_every": 4, "log_every": 1, "output_dir": str(tmp_path / name)},
        "deepspeed": {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4, "gradient_clipping": 1.0,
                      "torch_autocast": {"enabled": True, "dtype": "bfloat16"},
                      "zero_optimization": {"stage": zero}, "optimizer": optimizers[optimizer]},
    }
    recipe.update(extra)  # whole sections, e.g. publish={...}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    return path


def launch(recipe, ranks=2, args=(), env_extra=None, wait=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    if ranks == 1:
        command = [sys.executable, "-m", "pretrain", "--config", str(recipe), *args]
        env["MASTER_PORT"] = str(free_port())
    else:
        command = ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(free_port()), "--module", "pretrain",
                   "--config", str(recipe), *args]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    if not wait:
        return process
    output, _ = process.communicate(timeout=600)
    return process.returncode, output


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl", "train")}


def test_two_ranks_loss_falls_and_sigkill_resume_reproduces_the_curve(tmp_path, corpus_file, cache_dir, registry):
    steps = 24
    full = write_recipe(tmp_path, corpus_file, cache_dir, "full", steps=steps, publish={"name": "tiny-test", "version": "1"})
    code, output = launch(full)
    assert code == 0, output[-3000:]
    # what the run is doing before its first step is said, not silent
    assert output.count("pretrain: reading, tokenising and packing the corpus (cached for later runs)") == 1
    assert output.count("pretrain: loading the compiled CPU kernels (the first run builds them") == 1
    assert "pretrain: 2 rank(s) on cpu, bf16 autocast; MFU against the measured bf16 matmul peak" in output
    reference = losses(tmp_path / "full")
    assert sorted(reference) == list(range(1, steps + 1))
    assert sum(reference[s] for s in (22, 23, 24)) < sum(reference[s] for s in (1, 2, 3)) - 1.0
    evals = read_metrics(tmp_path / "full" / "metrics.jsonl", "eval")
    assert evals[-1]["mlm_loss"] < evals[0]["mlm_loss"]
    # the exported model is published and loads back by name
    assert "published tiny-test@1" in output
    model = zoo.from_pretrained("tiny-test@1")
    assert model.config.num_hidden_layers == 2

    # the same run, killed with SIGKILL mid-run (after some checkpoint), then resumed
    killed = write_recipe(tmp_path, corpus_file, cache_dir, "killed", steps=steps)
    process = launch(killed, wait=False)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics.is_file() and any(r["step"] >= 9 for r in read_metrics(metrics, "train")):
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    last = find_checkpoint(tmp_path / "killed" / "checkpoints", None).step
    assert 8 <= last < steps
    code, output = launch(killed, args=["--resume"])
    assert code == 0, output[-3000:]
    assert f"resumed from step_{last:07d} (step {last}) on the same 2 rank(s): the run continues exactly" in output
    resumed = read_metrics(metrics)
    start = [i for i, r in enumerate(resumed) if r["kind"] == "resume"][-1]
    after = {r["step"]: r["loss"] for r in resumed[start:] if r["kind"] == "train"}
    assert sorted(after) == list(range(last + 1, steps + 1))
    for step, loss in after.items():
        assert loss == pytest.approx(reference[step], rel=1e-6, abs=1e-6), step
    # the records the killed run wrote after its checkpoint were dropped: every step is there once
    trained = [r["step"] for r in resumed if r["kind"] == "train"]
    assert trained == list(range(1, steps + 1))
    assert [r["step"] for r in resumed if r["kind"] == "checkpoint"] == sorted({*range(4, steps + 1, 4)})
    assert all(r["grad_norm"] > 0 for r in resumed if r["kind"] == "train")
    assert read_metrics(metrics, "run")[0]["mfu_basis"] == "measured"
    assert read_metrics(metrics, "run")[0]["devices"] == {"cpu": 2}


@pytest.mark.parametrize("zero", [2, 3])
def test_zero_stages_2_and_3(tmp_path, corpus_file, cache_dir, zero):
    recipe = write_recipe(tmp_path, corpus_file, cache_dir, f"zero{zero}", zero=zero, optimizer="adamw", steps=8)
    code, output = launch(recipe)
    assert code == 0, output[-3000:]
    curve = losses(tmp_path / f"zero{zero}")
    assert all(map(torch.isfinite, map(torch.tensor, curve.values())))
    assert curve[8] < curve[1]
    # the consolidated fp32 export reproduces the held-out loss the run reported
    model = zoo.from_pretrained(tmp_path / f"zero{zero}" / "export")
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("zero,optimizer", [(0, "lamb"), (1, "adamw")])
def test_resume_two_rank_checkpoint_on_one_rank(tmp_path, corpus_file, cache_dir, zero, optimizer):
    """ZeRO-1 checkpoints are partitioned: the resume converts to a universal checkpoint; ZeRO-0 ones
    hold whole tensors. With dropout on, the masks follow each micro-batch's first sample, so the
    1-rank continuation follows the 2-rank curve up to the order of the gradient reduction: with
    bf16 autocast that moves the losses by about 1e-4 relative (2e-3 allowed)."""
    two = write_recipe(tmp_path, corpus_file, cache_dir, "two", zero=zero, optimizer=optimizer, steps=8, dropout=0.1)
    code, output = launch(two)
    assert code == 0, output[-3000:]
    reference = losses(tmp_path / "two")
    one = two
    run = tmp_path / "two"
    for tag in [c for c in complete_checkpoints(run / "checkpoints") if c.step == 8]:
        import shutil

        shutil.rmtree(tag.path)  # continue from step 4 on one rank
    code, output = launch(one, ranks=1, args=["--resume", "4"])
    assert code == 0, output[-3000:]
    assert ("on 1 rank(s); it was written by 2. The data order is the same (seed and global batch of 8 sequences). "
            "Dropout masks are the same") in output
    records = read_metrics(run / "metrics.jsonl")
    resume = [r for r in records if r["kind"] == "resume"][-1]
    assert (resume["from_world_size"], resume["world_size"], resume["step"]) == (2, 1, 4)
    continued = {r["step"]: r["loss"] for r in records[records.index(resume):] if r["kind"] == "train"}
    assert sorted(continued) == [5, 6, 7, 8]
    for step, loss in continued.items():
        assert loss == pytest.approx(reference[step], rel=2e-3), step


def test_fail_fast_on_bad_recipe_missing_and_empty_corpus(tmp_path, corpus_file, cache_dir):
    bad = tmp_path / "bad.yaml"
    recipe = yaml.safe_load(write_recipe(tmp_path, corpus_file, cache_dir).read_text())
    recipe["training"]["chekpoint_every"] = 3
    bad.write_text(yaml.safe_dump(recipe))
    code, output = launch(bad, ranks=1)
    assert code == 2 and "unknown key 'training.chekpoint_every' (did you mean 'training.checkpoint_every'?)" in output

    missing = write_recipe(tmp_path, tmp_path / "no-such-corpus.txt", cache_dir, "missing")
    code, output = launch(missing, ranks=1)
    assert code == 1 and "corpus file not found" in output and "no-such-corpus.txt" in output

    empty_file = tmp_path / "empty.txt"
    empty_file.write_text("\n\n \n")
    empty = write_recipe(tmp_path, empty_file, cache_dir, "empty")
    code, output = launch(empty, ranks=1)
    assert code == 1 and "the corpus is empty" in output


def test_a_data_error_on_two_ranks_is_one_message(tmp_path, cache_dir):
    """Rank 0 finds the bad bytes and tells rank 1: both stop, the message is printed once, and no rank
    dies of a lost connection or prints a traceback."""
    bad = tmp_path / "bad.txt"
    bad.write_bytes("今天天气很好。\n".encode() * 50 + b"\xff\xfe broken\n")
    code, output = launch(write_recipe(tmp_path, bad, cache_dir, "bad-data"))
    assert code != 0
    message = f"pretrain: data.sources[0]: {bad}:51: bytes that are not valid UTF-8 at byte offset 1100"
    assert output.count(message) == 1, output[-3000:]
    assert "Traceback" not in output and "Connection closed" not in output


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, corpus_file, cache_dir):
    recipe = yaml.safe_load(write_recipe(tmp_path, corpus_file, cache_dir, "nan").read_text())
    recipe["training"]["checkpoint_every"] = 1
    recipe["deepspeed"]["gradient_clipping"] = 0.0
    recipe["deepspeed"]["optimizer"]["params"]["lr"] = 1e30
    recipe["deepspeed"]["optimizer"]["params"]["max_coeff"] = 1e30
    path = tmp_path / "nan.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, output = launch(path, ranks=1)
    assert code == 1 and "non-finite loss" in output and "Last good checkpoint" in output
    last = find_checkpoint(tmp_path / "nan" / "checkpoints", None)
    assert f"Last good checkpoint: {last.path}" in output


def test_resume_auto_starts_afresh_then_continues(tmp_path, corpus_file, cache_dir, registry):
    """`--resume auto` serves a job that a scheduler starts again with the same command (SLURM --requeue,
    torchrun --max-restarts): the first time it starts afresh, where `--resume` finds no checkpoint, and
    sets aside what an attempt that died before its first checkpoint logged; the next time it continues.
    A finished run started again does not publish its last step a second time (a fixed version failed).
    --restart, which would delete the run at every start, is refused with it."""
    recipe = write_recipe(tmp_path, corpus_file, cache_dir, "requeued", steps=4,
                          publish={"name": "requeued-test", "version": "1"})
    run_dir = tmp_path / "requeued"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 2, "loss": 9.5}) + "\n")
    code, output = launch(recipe, ranks=1, args=["--resume"])
    assert code == 1 and f"pretrain: no complete checkpoint under {run_dir / 'checkpoints'}" in output, output[-3000:]
    code, output = launch(recipe, ranks=1, args=["--resume", "auto"])
    assert code == 0 and "published requeued-test@1" in output, output[-3000:]
    earlier = [path.name for path in run_dir.glob("metrics.*.jsonl")]
    assert len(earlier) == 1 and (f"pretrain: metrics.jsonl: an earlier attempt's records (no checkpoint of it is "
                                  f"left) moved to {earlier[0]}; the run starts afresh") in output
    assert read_metrics(run_dir / earlier[0]) == [{"kind": "train", "step": 2, "loss": 9.5}]
    trained = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl", "train")]
    assert trained == [1, 2, 3, 4] and losses(run_dir)[2] != 9.5
    code, output = launch(recipe, ranks=1, args=["--resume", "auto"])
    assert code == 0 and "resumed from step_0000004 (step 4)" in output, output[-3000:]
    assert ("pretrain: step 4 is published already, as requeued-test@1 (by an earlier attempt of this run)"
            in output)
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl", "train")] == [1, 2, 3, 4]
    assert [r["ref"] for r in read_metrics(run_dir / "metrics.jsonl", "publish")] == ["requeued-test@1"]
    code, output = launch(recipe, ranks=1, args=["--resume", "auto", "--restart"])
    assert code == 2 and "--restart deletes the run that --resume continues: give one of them" in output
    assert (run_dir / "checkpoints" / "step_0000004").is_dir()


def test_fp16_autocast_by_any_of_its_names_logs_the_unscaled_gradient_norm(tmp_path, corpus_file, cache_dir):
    """torch_autocast in fp16, named "half" (DeepSpeed takes fp16, float16, half, torch.float16): the run computes
    in fp16 (read as fp32 before: MFU against the fp32 peak, evaluation without autocast), and the gradient norm
    it logs is the norm of the gradients, not of DeepSpeed's loss-scaled ones (65536× at the start). The same
    first step in bf16, without dropout: the norms agree to the two dtypes' rounding."""
    norms, devices = {}, {}
    for name, dtype in (("bf16", "bfloat16"), ("fp16", "half")):
        recipe = yaml.safe_load(write_recipe(tmp_path, corpus_file, cache_dir, name, steps=2, dropout=0.0).read_text())
        recipe["deepspeed"]["torch_autocast"]["dtype"] = dtype
        recipe["training"].update(eval_every=100, checkpoint_every=100, export=False, peak_tflops=1.0)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        code, output = launch(path, ranks=1)
        assert code == 0, output[-3000:]
        metrics = tmp_path / name / "metrics.jsonl"
        devices[name] = read_metrics(metrics, "run")[0]["device"]
        norms[name] = read_metrics(metrics, "train")[0]["grad_norm"]
    assert devices == {"bf16": "cpu, bf16 autocast", "fp16": "cpu, fp16 autocast"}
    assert norms["fp16"] == pytest.approx(norms["bf16"], rel=0.05)


def test_incomplete_checkpoint_never_shadows_the_last_complete(tmp_path):
    directory = tmp_path / "checkpoints"
    for step, complete in ((4, True), (8, True), (12, False)):
        path = directory / f"step_{step:07d}"
        path.mkdir(parents=True)
        (path / "mp_rank_00_model_states.pt").write_bytes(b"x")
        if complete:
            (path / MARKER).write_text(json.dumps({"step": step, "world_size": 2, "zero_stage": 0}))
    (directory / "step_0000016").mkdir()
    (directory / "step_0000016" / MARKER).write_text('{"step": 16, "world')  # marker cut short by the crash
    assert find_checkpoint(directory, None).step == 8
    assert find_checkpoint(directory, "4").tag == "step_0000004"
    with pytest.raises(FileNotFoundError, match="no complete checkpoint '12'"):
        find_checkpoint(directory, "12")
    prune(directory, keep=1)
    assert [c.step for c in complete_checkpoints(directory)] == [8]
    assert (directory / "step_0000012").exists()  # newer than the newest complete: left for inspection


def graph_breaks(output: str) -> list[tuple[str, list[str]]]:
    """The graph breaks TORCH_LOGS=graph_breaks reports in `output`, in order: (the record's first line,
    the files of its user stack, outermost first). torch 2.11 names the place ("... in user code at
    FILE:LINE") and leaves the stack out of a break repeated there, which then gets the stack of the
    place's first record; torch 2.10 gives every record its stack."""
    records: list[tuple[str, list[str]]] = []
    for line in output.splitlines():
        if "[__graph_breaks]" not in line:
            continue
        text = line.split("[__graph_breaks]", 1)[1].strip()
        if text.startswith("Graph break"):  # not "Graph Break Reason:", a line of the same record
            records.append((text, []))
        elif records and text.startswith('File "'):
            records[-1][1].append(text.split('"')[1])
    stacks: dict[str, list[str]] = {}
    for text, stack in records:
        place = text.split(" in user code at ", 1)[-1]
        if stack:
            stacks.setdefault(place, stack)
        else:
            stack.extend(stacks.get(place, []))
    return records


def breaks_inside_deepspeed(stack: list[str]) -> bool:
    """Whether the innermost frame of a graph break's user stack outside torch itself is DeepSpeed's."""
    outside_torch = [file for file in stack if f"{os.sep}torch{os.sep}" not in file]
    return bool(outside_torch) and f"{os.sep}deepspeed{os.sep}" in outside_torch[-1]


def test_graph_breaks_are_read_with_their_place_and_stack():
    """The reader of TORCH_LOGS's graph breaks, on the records torch 2.11 and 2.10 wrote for DeepSpeed's
    forward pre-hook (a comparison with its ZeRO stage enum that their dynamo cannot trace), and on one
    in a model."""
    prefix = "[rank0]:V1208 01:24:59.617000 8835 torch/_dynamo/symbolic_convert.py:5127] [0/0] [__graph_breaks] "
    polyfill = "/v/lib/python3.11/site-packages/torch/_dynamo/polyfills/__init__.py:551"
    engine = '  File "/v/lib/python3.11/site-packages/deepspeed/runtime/engine.py", line 1619, in zero_optimization_stage'
    in_polyfill = '  File "/v/lib/python3.11/site-packages/torch/_dynamo/polyfills/__init__.py", line 551, in cmp_lt'
    log = "\n".join(prefix + text for text in (
        f"Graph break in user code at {polyfill}",  # torch 2.11's records
        "Graph Break Reason: Failed to handle graph break gracefully.",
        "User code traceback:",
        '  File "/work/main/pretrain/trainer.py", line 797, in evaluate',
        '  File "/v/lib/python3.11/site-packages/torch/nn/modules/module.py", line 1812, in inner',
        engine,
        in_polyfill,
        f"Graph break (user stack suppressed due to duplicate graph break) in user code at {polyfill}",
        "Graph break in user code at /work/main/zoo/modeling.py:61",
        '  File "/work/main/pretrain/trainer.py", line 797, in evaluate',
        '  File "/work/main/zoo/modeling.py", line 61, in forward',
        "Graph break: torch.compile cannot properly resume from this graph break, which results in a skip.",  # 2.10's
        "The graph break occurred in the following user code:",
        engine,
        in_polyfill,
    )) + "\nGraph break (not a TORCH_LOGS line)"
    breaks = graph_breaks(log)
    assert [len(stack) for _, stack in breaks] == [4, 4, 2, 2]
    assert breaks[1] == (f"Graph break (user stack suppressed due to duplicate graph break) in user code at {polyfill}",
                         breaks[0][1])
    assert breaks[0][1][-2].endswith("deepspeed/runtime/engine.py")
    assert [breaks_inside_deepspeed(stack) for _, stack in breaks] == [True, True, False, True]


def test_compiled_training_follows_the_eager_curve_without_graph_breaks(tmp_path, corpus_file, cache_dir):
    """`training.compile: true` (DeepSpeed's engine.compile(); inductor on the CPU): the model, with our
    custom operators, compiles without a graph break, recompiles only between evaluation and training
    (TORCH_LOGS prints both), and trains to the eager run's loss curve. Dropout is off, so both runs
    compute the same function; the curves differ by bf16 rounding only, since inductor fuses the
    elementwise chains and keeps them in fp32 between the roundings the eager operations make.

    Under torch 2.10 and 2.11 dynamo cannot trace DeepSpeed's forward pre-hook (it compares the ZeRO
    stage with an enum), so the hook and the frame that calls it run eagerly; the model's forward, called
    from that frame, is still compiled as a frame of its own (the recompile it logs is the forward's).
    Only breaks whose innermost frame outside torch is DeepSpeed's are let through."""
    curves = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        recipe = write_recipe(tmp_path, corpus_file, cache_dir, name, steps=6, dropout=0.0)
        settings = yaml.safe_load(recipe.read_text())
        settings["training"]["compile"] = compiled
        recipe.write_text(yaml.safe_dump(settings, allow_unicode=True))
        code, output = launch(recipe, ranks=1, env_extra={"TORCH_LOGS": "graph_breaks,recompiles"})
        assert code == 0, output[-3000:]
        curves[name] = losses(tmp_path / name)
    # one graph for the evaluations (under no_grad) and one for the training steps; the number of masked
    # tokens, new every batch, is dynamic from the first trace on
    breaks = graph_breaks(output)
    assert breaks or "Graph break" not in output, output[-3000:]  # every break the log has is read
    assert all(breaks_inside_deepspeed(stack) for _, stack in breaks), breaks
    reasons = [line for line in output.splitlines() if "[__recompiles]" in line and " - " in line]
    assert reasons and all("GLOBAL_STATE changed: grad_mode" in line for line in reasons), "\n".join(reasons)
    assert curves["eager"].keys() == curves["compiled"].keys() == set(range(1, 7))
    for step, loss in curves["eager"].items():
        assert abs(curves["compiled"][step] - loss) <= 2e-3 * loss, (step, curves)  # seen: 1e-4


def test_a_short_heldout_batch_leaves_the_compiled_training_graph_static():
    """Ten held-out sequences in micro-batches of 4: the last evaluation batch has 2. Dynamo then took the
    batch size for a dynamic one, and the training graph compiled after the evaluation had a symbolic
    batch size for the whole run. With the batches as `_compiled_batch` marks them, the short batch gets
    a graph of its own and the training graph's only symbolic size is the number of masked tokens."""
    from types import SimpleNamespace

    import numpy as np

    from pretrain.loader import heldout_batches
    from pretrain.masking import MaskingPolicy
    from pretrain.recipe import MaskingSection
    from pretrain.trainer import Trainer

    torch.manual_seed(5)
    model = zoo.create("roformer-v2-mini", task="masked-lm", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids = np.random.default_rng(0).integers(104, 12000, (10, 32))

    class Heldout:
        def __len__(self):
            return len(ids)

        def __getitem__(self, index):
            return {"input_ids": ids[index], "word_starts": np.ones_like(ids[index])}

    policy = MaskingPolicy.from_recipe(MaskingSection(), zoo.default_tokenizer(), model.config.vocab_size)
    batches = list(heldout_batches(Heldout(), len(ids), 4, 5, policy))
    assert [len(batch["input_ids"]) for batch in batches] == [4, 4, 2]
    trainer = Trainer.__new__(Trainer)  # only what _compiled_batch reads
    trainer.recipe = SimpleNamespace(training=SimpleNamespace(compile=True))
    graphs = []  # (compiled for training?, how many symbolic sizes its inputs have), one per graph

    def backend(graph, example_inputs):
        sizes = {str(s) for x in example_inputs for s in (x.shape if isinstance(x, torch.Tensor) else [x])
                 if isinstance(s, torch.SymInt)}
        graphs.append((torch.is_grad_enabled(), len(sizes)))
        return graph.forward

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend)
    try:
        with torch.no_grad():
            model.eval()
            for batch in batches:
                compiled(**trainer._compiled_batch(dict(batch)), masked_positions_only=True)
        model.train()
        for batch in batches[:2]:
            compiled(**trainer._compiled_batch(dict(batch)), masked_positions_only=True).loss.backward()
    finally:
        torch._dynamo.reset()
    assert graphs == [(False, 1), (False, 1), (True, 1)], graphs  # the evaluation's two sizes, then training


def test_resuming_a_zero1_checkpoint_with_zero0_names_both_stages(tmp_path, corpus_file, cache_dir):
    recipe = write_recipe(tmp_path, corpus_file, cache_dir, "zero1", zero=1, optimizer="adamw", steps=2)
    code, output = launch(recipe, ranks=1)
    assert code == 0, output[-3000:]
    checkpoint = find_checkpoint(tmp_path / "zero1" / "checkpoints", None)
    code, output = launch(recipe, ranks=1, args=["deepspeed.zero_optimization.stage=0", "--resume"])
    assert code == 1, output[-3000:]
    assert (f"pretrain: checkpoint {checkpoint.path} was written with ZeRO stage 1, but {recipe} asks for ZeRO stage 0, "
            "which cannot load a partitioned (ZeRO ≥ 1) checkpoint: resume with deepspeed.zero_optimization.stage: 1 "
            "(on this or any other number of ranks)") in output, output[-3000:]
    assert "Traceback" not in output


HELDOUT, MICRO = 9, 4  # on 2 ranks: 5 and 4 held-out sequences, so 2 and 1 batches of 4


def _heldout_setup(rank, world):
    """The pieces Trainer.evaluate reads: a seeded roformer-v2-mini, random held-out sequences, a policy."""
    from types import SimpleNamespace

    import numpy as np

    from pretrain.masking import MaskingPolicy
    from pretrain.recipe import MaskingSection

    torch.manual_seed(5)
    model = zoo.create("roformer-v2-mini", task="masked-lm", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids = np.random.default_rng(0).integers(104, 12000, (HELDOUT, 32))

    class Heldout:
        def __len__(self):
            return HELDOUT

        def __getitem__(self, index):
            return {"input_ids": ids[index], "word_starts": np.ones_like(ids[index])}

    policy = MaskingPolicy.from_recipe(MaskingSection(), zoo.default_tokenizer(), model.config.vocab_size)
    recipe = SimpleNamespace(seed=5, data=SimpleNamespace(heldout=SimpleNamespace(max_sequences=HELDOUT)),
                             training=SimpleNamespace(compile=False))
    return model, SimpleNamespace(heldout=Heldout()), policy, recipe


def _evaluate_on_zero3(rank, world):
    import deepspeed

    from pretrain.trainer import Trainer
    from zoo.runtime import Runtime

    model, corpus, policy, recipe = _heldout_setup(rank, world)
    config = {"train_batch_size": MICRO * world, "train_micro_batch_size_per_gpu": MICRO, "steps_per_print": 10**9,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    trainer = Trainer.__new__(Trainer)  # only what evaluate() reads
    trainer.engine, trainer.runtime, trainer.corpus, trainer.policy, trainer.recipe = (
        engine, Runtime(torch.device("cpu")), corpus, policy, recipe)
    trainer.micro_batch, trainer.rank, trainer.world = MICRO, rank, world
    return trainer.evaluate()


def test_zero3_evaluation_on_an_uneven_heldout_split_gives_the_one_rank_figures():
    """Under ZeRO-3 every forward pass gathers the partitioned parameters (a collective): with 2 and 1
    held-out batches the ranks' collectives stopped pairing up and the evaluation timed out. Now it
    gives the figures of the whole held-out set evaluated on one process."""
    import torch.nn.functional as F

    from pretrain.loader import heldout_batches

    from .ranks import run_ranks

    results = run_ranks(_evaluate_on_zero3, world=2, timeout_s=30)
    model, corpus, policy, recipe = _heldout_setup(0, 1)
    model.eval()
    correct = count = loss = 0.0
    with torch.no_grad():
        for batch in heldout_batches(corpus.heldout, HELDOUT, MICRO, recipe.seed, policy):
            logits = model(**batch, masked_positions_only=True).logits
            targets = batch["labels"].flatten()[batch["masked_positions"]]
            correct += float((logits.argmax(-1) == targets).sum())
            count += targets.numel()
            loss += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
    assert results[0] == results[1]
    assert results[0]["masked_tokens"] == count
    assert results[0]["mlm_accuracy"] == pytest.approx(correct / count, abs=1e-9)
    assert results[0]["mlm_loss"] == pytest.approx(loss / count, rel=1e-5)


def _zero3_losses(rank, world):
    """Three ZeRO-3 steps of a dropout-free roformer-v2-mini, eager and through engine.compile()."""
    import deepspeed

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(104, 12000, (4, 32), generator=g)
    labels = torch.where(torch.rand(4, 32, generator=g) < 0.15, ids, torch.full_like(ids, -100))
    masked = (labels != -100).flatten().nonzero().flatten()
    config = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 4, "steps_per_print": 10**9,
              "zero_optimization": {"stage": 3}, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
    losses = {}
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        model = zoo.create("roformer-v2-mini", task="masked-lm", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
        if mode == "compiled":
            engine.compile(backend="aot_eager")
        losses[mode] = []
        for _ in range(3):
            loss = engine(input_ids=ids, labels=labels, masked_positions=masked, masked_positions_only=True).loss
            engine.backward(loss)
            engine.step()
            losses[mode].append(loss.item())
    return losses


def test_zero3_trains_through_engine_compile():
    """ZeRO-3 with training.compile: the embeddings read the segment row off token_type_embeddings'
    weight without calling that module, so no ZeRO-3 hook gathered it, and the compiled forward pass
    indexed an empty partition (IndexError). Where hooks watch the module it is called; the compiled
    steps give the eager steps' losses."""
    from .ranks import run_ranks

    losses, = run_ranks(_zero3_losses, world=1, timeout_s=60)
    assert losses["eager"][0] > losses["eager"][2]  # it trains
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-5)  # the same function, fp32 sums in other orders


def _window_peaks(rank, world, recipe_path):
    """A run in this process whose second step also allocates and frees 305 MiB; each train record's peak."""
    from pretrain.metrics import read_metrics
    from pretrain.recipe import load_recipe
    from pretrain.trainer import Trainer

    trainer = Trainer(load_recipe(recipe_path), restart=True)
    train_step = trainer._train_step

    def step_with_a_spike(step_batches, logging_step):
        if trainer.step == 1:
            torch.ones(80_000_000)  # written, so resident, and freed at once
        return train_step(step_batches, logging_step)

    trainer._train_step = step_with_a_spike
    trainer.train()
    return [[r["step"], r["peak_memory_mb"]] for r in read_metrics(trainer.output_dir / "metrics.jsonl", "train")]


def test_each_record_reports_the_peak_memory_of_its_own_window(tmp_path, corpus_file, cache_dir):
    """peak_memory_mb was the process's all-time peak, so after a peak (a growth, an evaluation) every later
    record repeated it. Each record now has the peak since the one before (on the CPU, resident memory)."""
    from .ranks import run_ranks

    recipe = yaml.safe_load(write_recipe(tmp_path, corpus_file, cache_dir, "peaks", steps=4, dropout=0.0).read_text())
    recipe["training"].update(eval_every=100, checkpoint_every=100, export=False, peak_tflops=1.0)
    path = tmp_path / "peaks.yaml"
    path.write_text(yaml.safe_dump(recipe))
    records, = run_ranks(_window_peaks, world=1, timeout_s=120, args=(str(path),))
    peaks = dict(records)
    assert sorted(peaks) == [1, 2, 3, 4]
    assert peaks[2] > max(peaks[1], peaks[3], peaks[4]) + 250  # the 305 MiB shows in its window only
    assert abs(peaks[4] - peaks[3]) < 50


class _Clock:
    """time, with a perf_counter that moves only when told to."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def __getattr__(self, name):
        return getattr(time, name)


def _clocked_step_times(rank, world, recipe_path):
    """A run in this process on a clock that moves 1 s per step, 0.5 s per metrics record, 40 s per evaluation,
    60 s per growth and 70 s per checkpoint: each train record's step_time_s and the model FLOPs per second
    and token its MFU stands for, and the FLOPs per token of each model the run trained."""
    import pretrain.trainer as trainer_module
    from pretrain.metrics import read_metrics
    from pretrain.recipe import load_recipe

    trainer = trainer_module.Trainer(load_recipe(recipe_path), restart=True)
    clock = trainer_module.time = _Clock()

    def costing(method, seconds):
        def timed(*args, **kwargs):
            result = method(*args, **kwargs)
            clock.now += seconds
            return result
        return timed

    flops = [trainer.flops_per_token]  # per token, of each model the run trains
    grow = costing(trainer.grow, 60.0)

    def growing(stage):
        grow(stage)
        flops.append(trainer.flops_per_token)

    trainer._train_step = costing(trainer._train_step, 1.0)
    trainer.evaluate = costing(trainer.evaluate, 40.0)
    trainer.grow = growing
    trainer.save_checkpoint = costing(trainer.save_checkpoint, 70.0)
    trainer.log.write = costing(trainer.log.write, 0.5)
    trainer.train()
    records = read_metrics(trainer.output_dir / "metrics.jsonl", "train")
    tokens = trainer.global_batch * trainer.recipe.data.seq_len
    return [[r["step"], r["step_time_s"], r["mfu"] * trainer.total_peak_flops / tokens] for r in records], flops


@pytest.mark.parametrize("pause", ["evaluation", "growth"])
def test_step_times_count_the_loop_and_not_its_evaluations_checkpoints_or_growth(tmp_path, corpus_file, cache_dir, pause):
    """The logged step time is the loop's: each window starts where the one before ended, so the cost of writing
    a record counts (it went uncounted); an evaluation, checkpoint or growth between them does not (an evaluation
    or checkpoint after a record counted in the next window; a growth dropped the time of the steps before it
    since the last record, and credited the steps before it with the grown model's FLOPs in the MFU). A clock that
    moves by fixed amounts, no timing: 2 steps a window, steps 3 and 6 followed by an evaluation or a growth
    (step 3) and a checkpoint (step 6)."""
    from .ranks import run_ranks

    recipe = yaml.safe_load(write_recipe(tmp_path, corpus_file, cache_dir, pause, steps=6, dropout=0.0).read_text())
    recipe["training"].update(log_every=2, eval_every=3 if pause == "evaluation" else 100, checkpoint_every=100,
                              export=False, peak_tflops=1.0)
    if pause == "growth":
        recipe["stages"] = [{"name": "small", "steps": 3},
                            {"name": "grown", "grow": {"hidden_size": 256, "num_layers": 4, "num_heads": 4,
                                                       "intermediate_size": 1024, "seed": 3}}]
    path = tmp_path / f"{pause}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    (records, flops), = run_ranks(_clocked_step_times, world=1, timeout_s=120, args=(str(path),))
    # steps 1-2: 2 s; steps 3-4: the record at 2 (0.5 s) and 2 s; steps 5-6 likewise
    assert [[step, seconds] for step, seconds, _ in records] == [[2, 1.0], [4, 1.25], [6, 1.25]]
    # the MFU's FLOPs per second: each step at its own model's FLOPs (steps 1-3 the small model's after a growth)
    small, grown = (flops[0], flops[-1])
    expected = [2 * small / 2.0, (small + grown) / 2.5, 2 * grown / 2.5]
    assert [rate for _, _, rate in records] == pytest.approx(expected, rel=1e-12)


def _build_corpus_slowly(rank, world, seconds):
    """Trainer._build_corpus with rank 0's tokenising taking `seconds`, once to the end and once into
    a data error; returns what each rank got."""
    from types import SimpleNamespace

    import pretrain.trainer as trainer_module
    from pretrain.errors import PretrainError

    outcome = {}
    for case in ("built", "data error", "other error"):
        def build_corpus(data, tokenizer, case=case):
            if rank == 0:
                time.sleep(seconds)
                if case == "data error":
                    raise PretrainError("data.sources[0]: corpus.txt:3: bytes that are not valid UTF-8")
                if case == "other error":
                    raise OSError("[Errno 28] No space left on device: 'checkpoints/cache'")
            return f"corpus of rank {rank}"

        trainer_module.build_corpus = build_corpus
        fake = SimpleNamespace(rank=rank, world=world, recipe=SimpleNamespace(data=None), tokenizer=None,
                               status=lambda message: None)
        try:
            outcome[case] = trainer_module.Trainer._build_corpus(fake)
        except Exception as error:
            outcome[case] = f"{type(error).__name__}: {error}"
    return outcome


def test_ranks_wait_for_the_corpus_longer_than_the_collective_timeout():
    """Rank 0 tokenises (here 6 s) while the others wait: the wait outlasts the process group's timeout
    (3 s, ZOO_DIST_TIMEOUT_S in a run; it ended the run before), and a data error on rank 0 still stops
    every rank with its message."""
    from .ranks import run_ranks

    rank0, rank1 = run_ranks(_build_corpus_slowly, world=2, timeout_s=3, args=(6,))
    assert (rank0["built"], rank1["built"]) == ("corpus of rank 0", "corpus of rank 1")
    message = "data.sources[0]: corpus.txt:3: bytes that are not valid UTF-8"
    assert (rank0["data error"], rank1["data error"]) == (f"PretrainError: {message}", f"RunError: {message}")
    message = "[Errno 28] No space left on device: 'checkpoints/cache'"  # any error of rank 0's, not only data errors
    assert (rank0["other error"], rank1["other error"]) == (f"OSError: {message}", f"RunError: {message}")


def _export_failing_on_rank0(rank, world, folder):
    """Trainer.export where rank 0's part fails; what each rank got."""
    from types import SimpleNamespace

    from pretrain.trainer import Trainer

    def export_on_rank0(state, export_dir, final_eval):
        raise RuntimeError("export: weights do not match the model: missing ['encoder.layers.0.attn.q.weight']")

    fake = SimpleNamespace(rank=rank, world=world, step=4, zero_stage=0, engine=SimpleNamespace(module=torch.nn.Linear(2, 2)),
                           checkpoint_dir=Path(folder), output_dir=Path(folder), _export_on_rank0=export_on_rank0)
    try:
        Trainer.export(fake, None)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return "exported"


def test_an_export_that_fails_on_rank_0_stops_every_rank_with_its_message(tmp_path):
    """Rank 0 exports (and publishes) alone while the others wait; when it failed they waited in a barrier,
    on other machines until ZOO_DIST_TIMEOUT_S (here the barrier of the ranks' exit answered it, and rank 1
    went on as if the export had been written). They now stop with rank 0's error."""
    from .ranks import run_ranks

    message = "export: weights do not match the model: missing ['encoder.layers.0.attn.q.weight']"
    assert run_ranks(_export_failing_on_rank0, world=2, args=(str(tmp_path),)) == [f"RuntimeError: {message}",
                                                                                   f"RunError: {message}"]


def _check_output_dir(rank, world, base, shared):
    """Trainer._check_shared_output_dir with the run folder one for every rank (`shared`), or one per rank,
    as on machines without a shared file system; what each rank got."""
    from types import SimpleNamespace

    from pretrain.errors import RunError
    from pretrain.trainer import Trainer

    folder = Path(base) / ("run" if shared else f"run-on-machine-{rank}")
    try:
        Trainer._check_shared_output_dir(SimpleNamespace(rank=rank, world=world, output_dir=folder))
    except RunError as error:
        return str(error)
    torch.distributed.barrier()  # rank 0 has removed its file
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else None


def test_ranks_that_do_not_share_the_run_folder_stop_together_before_writing(tmp_path):
    """Without a shared file system the saves succeeded, only rank 0's machine had complete checkpoints,
    and a resume or the export failed on some ranks while the others waited. Every rank now stops at the
    start, naming the ranks that do not see rank 0's folder; where the folder is shared nothing is left
    in it."""
    from .ranks import run_ranks

    assert run_ranks(_check_output_dir, world=2, timeout_s=20, args=(str(tmp_path), True)) == [[], []]
    separate = run_ranks(_check_output_dir, world=2, timeout_s=20, args=(str(tmp_path), False))
    assert separate == [
        f"training.output_dir {tmp_path / f'run-on-machine-{rank}'} is not one folder for every rank: rank(s) 1 did "
        "not find there the file rank 0 wrote. Each rank writes its part of every checkpoint there and a resume and "
        "the export read them all: set training.output_dir to a path on a file system every machine sees (NFS, "
        "Lustre, ...)" for rank in range(2)]


def _deepspeed_ranks_leave(rank, world):
    """DeepSpeed's init on these gloo ranks (its CPU all-reduce makes a shared-memory buffer per rank where
    all ranks are on one machine), then the trainer's close: whether the buffer existed before and after."""
    import deepspeed

    from pretrain.trainer import close_distributed, shm_allreduce_buffer

    os.environ["LOCAL_SIZE"] = str(world)  # as DeepSpeed's launcher sets it: all ranks on this machine
    deepspeed.init_distributed(dist_backend="gloo")
    buffer = shm_allreduce_buffer()
    before = buffer.exists()
    close_distributed()
    return [before, buffer.exists()]


def test_a_cpu_run_leaves_no_shared_memory_behind():
    """DeepSpeed's CPU all-reduce keeps a 64 MiB buffer per rank in /dev/shm, named after the run's port,
    and never removes it: each multi-rank CPU run left one per rank, in memory (this machine's 24 GB of
    shared memory filled up after a few hundred runs of the test suite, and the kernel killed it)."""
    from .ranks import run_ranks

    assert run_ranks(_deepspeed_ranks_leave, world=2) == [[True, False], [True, False]]


class _Initialised(Exception):
    pass


def _start(monkeypatch, environ, gpus=8, mpi4py=False):
    """init_distributed in a process started with `environ` on a machine with `gpus` GPUs (faked): the
    CUDA device it chooses and the rank variables DeepSpeed's init_distributed receives."""
    import importlib.util

    import deepspeed

    from pretrain.trainer import init_distributed

    monkeypatch.setattr(os, "environ", dict(environ))
    chosen, seen = [], {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: chosen.append(str(device)))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (object() if mpi4py else None) if name == "mpi4py"
                        else find_spec(name, *a))

    def init(dist_backend=None, timeout=None, **kwargs):
        keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        seen.update({key: os.environ[key] for key in keys if key in os.environ}, backend=dist_backend)
        raise _Initialised

    monkeypatch.setattr(deepspeed, "init_distributed", init)
    with pytest.raises(_Initialised):
        init_distributed()
    return chosen, seen


# what a lone process gets (MASTER_PORT as the cases below set it)
WORLD_OF_ONE = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29123", "backend": "nccl"}
OPEN_MPI = {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "16", "OMPI_COMM_WORLD_LOCAL_RANK": "5",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "8"}


@pytest.mark.parametrize("environ,device,expected", [
    # deepspeed --launcher openmpi on two machines of 8 GPUs, MASTER_ADDR from ./.deepspeed_env
    ({**OPEN_MPI, "MASTER_ADDR": "10.0.0.1"}, "cuda:5",
     {"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "5", "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "10.0.0.1",
      "MASTER_PORT": "29500", "backend": "nccl"}),
    # mpirun on one machine: the rendezvous is local
    ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "3",
      "OMPI_COMM_WORLD_LOCAL_SIZE": "4", "MASTER_PORT": "29777"}, "cuda:3",
     {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1",
      "MASTER_PORT": "29777", "backend": "nccl"}),
    # deepspeed --launcher impi / mpich (it exports MASTER_ADDR and MASTER_PORT)
    ({"PMI_RANK": "9", "PMI_SIZE": "12", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "4", "MASTER_ADDR": "node0",
      "MASTER_PORT": "29600"}, "cuda:1",
     {"RANK": "9", "WORLD_SIZE": "12", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "node0",
      "MASTER_PORT": "29600", "backend": "nccl"}),
    # srun over two machines: rank 0 is on the first host of the job's nodes
    ({"SLURM_PROCID": "6", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "2",
      "SLURM_NTASKS_PER_NODE": "4", "SLURM_JOB_NODELIST": "gpu[07-08]"}, "cuda:2",
     {"RANK": "6", "WORLD_SIZE": "8", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "gpu07",
      "MASTER_PORT": "29500", "backend": "nccl"}),
    # a lone process, also inside a one-task SLURM job: a world of one on cuda:0
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1", "SLURM_LOCALID": "0",
      "MASTER_PORT": "29123"}, "cuda:0",
     WORLD_OF_ONE),
    # and run directly in the batch script of an 8-task job (no srun: no step), not rank 0 of 8 waiting for 7
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0", "SLURM_NTASKS_PER_NODE": "4",
      "SLURM_JOB_NODELIST": "gpu[07-08]", "MASTER_PORT": "29123"}, "cuda:0",
     WORLD_OF_ONE),
    # torch's and DeepSpeed's launchers set RANK: their variables are used as they are
    ({**OPEN_MPI, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "cuda:1",
     {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1", "backend": "nccl"}),
])
def test_each_launcher_gives_the_rank_its_place(monkeypatch, environ, device, expected):
    """An MPI or SLURM launch sets no RANK: each process takes its rank, world and GPU from the launcher's
    variables (it became a world of one on cuda:0 before, every rank training alone)."""
    chosen, seen = _start(monkeypatch, environ)
    assert (chosen, seen) == ([device], expected)


def test_a_rank_that_sees_fewer_gpus_than_its_local_rank_is_told_why(monkeypatch):
    """One GPU visible per rank (SLURM's --gpus-per-task, a CUDA_VISIBLE_DEVICES per rank): DeepSpeed's
    engine puts the rank on cuda:<LOCAL_RANK> and fails with "invalid device ordinal"; the device choice
    wrapped LOCAL_RANK round the visible GPUs and could put two ranks on one."""
    from pretrain.errors import RunError

    environ = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "MASTER_ADDR": "h", "MASTER_PORT": "1",
               "CUDA_VISIBLE_DEVICES": "3"}
    with pytest.raises(RunError) as caught:
        _start(monkeypatch, environ, gpus=1)
    assert str(caught.value) == (
        "this process is rank 3 on its machine (LOCAL_RANK) but sees 1 GPU(s) (CUDA_VISIBLE_DEVICES=3): each rank "
        "runs on cuda:<LOCAL_RANK>, so every rank must see all of its machine's GPUs, as deepspeed and torchrun "
        "arrange (under SLURM: --gpus-per-node, not --gpus-per-task or --gpu-bind)")


def test_an_mpi_launch_over_machines_without_a_master_address_says_how_to_launch(monkeypatch):
    from pretrain.errors import RunError

    with pytest.raises(RunError) as caught:
        _start(monkeypatch, OPEN_MPI)
    assert str(caught.value) == (
        "Open MPI launched this process as rank 5 of 16, on several machines, but nothing says where rank 0 is: "
        "export MASTER_ADDR=<address of rank 0's machine> (and MASTER_PORT, default 29500) to every rank (with "
        "deepspeed --launcher openmpi or mvapich: a line MASTER_ADDR=<address> in ./.deepspeed_env), or install "
        "mpi4py, or launch with scripts/launch_multi_node.sh (DeepSpeed's own pdsh or no-ssh launcher)")
    # with mpi4py, DeepSpeed's MPI discovery finds rank 0's address (it runs when MASTER_ADDR is missing)
    chosen, seen = _start(monkeypatch, OPEN_MPI, mpi4py=True)
    assert chosen == ["cuda:5"] and "MASTER_ADDR" not in seen
    assert (seen["RANK"], seen["WORLD_SIZE"], seen["LOCAL_RANK"]) == ("5", "16", "5")


def _startup_lines(rank, world, recipe_path, onednn_bf16):
    """What a run in this process says while it is set up, on a CPU with or without oneDNN's bf16 kernels."""
    import pretrain.trainer
    from pretrain.recipe import load_recipe

    said = []
    pretrain.trainer.bf16_is_native = lambda device: onednn_bf16
    pretrain.trainer.Trainer.status = lambda self, message: said.append(message)
    pretrain.trainer.Trainer(load_recipe(recipe_path), restart=True)
    return said


def test_a_cpu_without_bf16_kernels_is_told_to_train_in_fp32(tmp_path, corpus_file, cache_dir):
    """On an AVX2 CPU bf16 autocast ran a training step 30 times slower than fp32 (zoo.runtime.bf16_is_native):
    the run says so and how to train in fp32; where oneDNN has bf16 kernels it says nothing of it."""
    from .ranks import run_ranks

    recipe = yaml.safe_load(write_recipe(tmp_path, corpus_file, cache_dir, "avx2", steps=1).read_text())
    recipe["training"].update(export=False, peak_tflops=1.0)
    path = tmp_path / "avx2.yaml"
    path.write_text(yaml.safe_dump(recipe))
    for onednn_bf16 in (False, True):
        said, = run_ranks(_startup_lines, world=1, timeout_s=120, args=(str(path), onednn_bf16))
        hint = [line for line in said if "no bf16 arithmetic" in line]
        if onednn_bf16:
            assert not hint, said
        else:
            assert len(hint) == 1 and hint[0].startswith(f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no")
            assert hint[0].endswith("on it, train in fp32 (deepspeed.torch_autocast.enabled=false)")
