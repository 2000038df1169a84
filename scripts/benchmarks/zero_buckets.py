"""What ZeRO 1/2's gradient buckets allocate for the shipped recipes, with DeepSpeed's default bucket and
with the recipe's own `reduce_bucket_size`, side by side.

    python scripts/benchmarks/zero_buckets.py [--out scripts/benchmarks/results/zero_buckets]

ZeRO 1 and 2 stage each gradient in a bucket of `reduce_bucket_size` elements before reducing it; unless
a config sets the size, DeepSpeed takes 5e8 elements, whatever the model. Which buffers a step allocates
depends on the config and the parameters, not on the device, so it can be counted here: for every
shipped recipe with ZeRO stage 1 or 2, its model is built and trained for two steps under its
`zero_optimization` and precision blocks (micro-batches of 2 × 64 tokens, two per step, one process on
gloo), once as the recipe has it and once without `reduce_bucket_size`. A dispatch mode records every
storage an operation makes, from the model's weights to the last step, and frees it when the storage
dies: the peak of what is alive (the CPU's stand-in for `torch.cuda.max_memory_allocated`: weights,
DeepSpeed's flat copies and buffers, optimizer state, gradients, these small batches' activations) and
the largest single allocation. The optimizer is torch's AdamW (the recipes' own may have no CPU kernel);
it does not touch the buckets. On a GPU the same buffers are device memory, beside a real micro-batch's
activations.

Writes zero_buckets.json, .md and .png to --out.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

OUT = Path(__file__).resolve().parent / "results" / "zero_buckets"
PRECISION_KEYS = ("bf16", "bfloat16", "fp16", "torch_autocast")


class Allocations(TorchDispatchMode):
    """Bytes of the storages operations make while it is on: `live` now, `peak`, and the `largest` one."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = self.largest = 0
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key, nbytes = id(storage), storage.nbytes()
            if key in self._seen or nbytes == 0:
                continue
            self._seen.add(key)
            weakref.finalize(storage, self._free, key, nbytes)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            self.largest = max(self.largest, nbytes)
        return out


def step_allocations(preset: str, ds_config: dict) -> dict:
    """`preset`'s masked LM built and trained two steps under `ds_config`: the peak and the largest
    allocation, in bytes, and its parameter count."""
    import deepspeed

    import zoo

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    with Allocations() as allocations:
        model = zoo.create(preset, task="masked-lm")
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
        for _ in range(2 * engine.gradient_accumulation_steps()):
            ids = torch.randint(104, model.config.vocab_size, (2, 64), generator=generator)
            engine.backward(engine(input_ids=ids, labels=ids).loss)
            engine.step()
    result = {"peak_bytes": allocations.peak, "largest_bytes": allocations.largest,
              "parameters": sum(p.numel() for p in model.parameters())}
    del engine, model
    gc.collect()
    return result


def config_of(recipe, bucket: bool) -> dict:
    """The recipe's ZeRO and precision blocks, 2 × 64-token micro-batches, torch's AdamW; without the
    recipe's reduce_bucket_size unless `bucket`."""
    zero = copy.deepcopy(recipe.deepspeed["zero_optimization"])
    if not bucket:
        zero.pop("reduce_bucket_size", None)
    return {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "steps_per_print": 10**9,
            "zero_optimization": zero, **{k: v for k, v in recipe.deepspeed.items() if k in PRECISION_KEYS},
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}}}


def zero_recipes() -> list:
    from pretrain.recipe import RECIPES_DIR, load_recipe

    recipes = [load_recipe(path) for path in sorted(RECIPES_DIR.glob("*.yaml"))]
    return [r for r in recipes if r.deepspeed.get("zero_optimization", {}).get("stage", 0) in (1, 2)]


def report(rows: list[dict]) -> str:
    lines = ["| recipe | ZeRO | parameters | reduce_bucket_size | peak allocated | largest allocation | "
             "peak × the recipe's |",
             "|---|---|---:|---:|---:|---:|---:|"]
    mib = 2**20
    for row in rows:
        ratio = row["peak_bytes"] / row["recipe_peak_bytes"]
        lines.append(f"| {row['recipe']} | {row['stage']} | {row['parameters'] / 1e6:.1f}M | {row['bucket']} | "
                     f"{row['peak_bytes'] / mib:,.1f} MiB | {row['largest_bytes'] / mib:,.1f} MiB | {ratio:.2f}× |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{row['recipe']}\n{row['bucket']}" for row in rows]
    ax.bar(labels, [row["peak_bytes"] / 2**20 for row in rows],
           color=["#c44" if row["bucket"].startswith("default") else "#48c" for row in rows])
    ax.set_ylabel("peak allocated: model, engine, 2 steps (MiB)")
    ax.set_title("ZeRO 1/2 gradient buckets: DeepSpeed's default vs the recipe's")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import deepspeed
    from tqdm import tqdm

    deepspeed.init_distributed(dist_backend="gloo")
    recipes = zero_recipes()
    rows = []
    with tqdm(total=2 * len(recipes), desc="zero buckets") as bar:
        for recipe in recipes:
            measured = []
            for bucket in (False, True):
                config = config_of(recipe, bucket)
                result = step_allocations(recipe.model.preset, config)
                size = config["zero_optimization"].get("reduce_bucket_size")
                measured.append({"recipe": recipe.run_name, "stage": config["zero_optimization"]["stage"],
                                 "bucket": f"{size:,}" if size else "default (5e8)", **result})
                bar.update()
            for row in measured:
                row["recipe_peak_bytes"] = measured[1]["peak_bytes"]
            rows += measured
    args.out.mkdir(parents=True, exist_ok=True)
    table = report(rows)
    (args.out / "zero_buckets.json").write_text(json.dumps(rows, indent=2))
    (args.out / "zero_buckets.md").write_text(table + "\n")
    plot(rows, args.out / "zero_buckets.png")
    print(table)


if __name__ == "__main__":
    main()
