"""Pretraining recipes: one YAML file per run, validated on load with errors that name the key.

    run_name: quickstart                 # outputs under checkpoints/runs/<run_name>/
    seed: 42
    model:     {preset: roformer-v2-tiny, config: {...}}  |  {family: gau-alpha, config: {...}}
               |  {init_from: REF}  (+ activation_checkpointing: false | true | <every k layers>)
    data:      {sources: [...], seq_len: 128, masking: {...}, positions: {...}, heldout: {...}}
    training:  {steps, lr_schedule, eval_every, checkpoint_every, keep_checkpoints, log_every, ...}
    publish:   {name, version, registry}  (optional: publish the final model to the registry)
    stages:    [...]                      (optional: growth stages, see pretrain/stages.py)
    deepspeed: {...}                      handed to deepspeed.initialize unchanged, except that an
                                          optimizer DeepSpeed cannot run here (Lamb on CPU) is
                                          replaced by ours with the same parameters, and torch_autocast
                                          without a dtype runs in bf16 on every device; every key DeepSpeed
                                          parses itself must be one it reads (deepspeed_keys.py; the
                                          optimizer's and scheduler's params go to their constructors)

Overrides on the command line use dotted keys: `training.steps=100 deepspeed.train_batch_size=32`.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import RecipeError
from .stages import parse_stages
from .validation import only_keys

RECIPES_DIR = Path(__file__).parent / "recipes"


# --------------------------------------------------------------------------- sections


@dataclass
class ModelSection:
    preset: str | None = None
    family: str | None = None
    init_from: str | None = None
    config: dict = field(default_factory=dict)
    activation_checkpointing: bool | int = False


@dataclass
class MaskingSection:
    rate: float = 0.15
    mask: float = 0.8
    random: float = 0.1
    whole_word: bool = False


@dataclass
class PositionsSection:
    type: str = "natural"  # natural | ruoss | equal_mean
    max_position: int | None = None  # Ruoss: sample from [0, max_position); default 16 × seq_len


@dataclass
class HeldoutSection:
    fraction: float = 0.01  # for sources other than the embedded corpus (which has its own slice)
    max_sequences: int = 256


@dataclass
class DataSection:
    sources: list = field(default_factory=lambda: [{"type": "embedded"}])
    seq_len: int = 128
    tokenizer: str = "default"  # "default", a registry/folder ref, or a vocab.txt path
    masking: MaskingSection = field(default_factory=MaskingSection)
    positions: PositionsSection = field(default_factory=PositionsSection)
    heldout: HeldoutSection = field(default_factory=HeldoutSection)
    cache_dir: str | None = None  # default checkpoints/cache


@dataclass
class TrainingSection:
    steps: int = 1000
    lr_schedule: dict | None = None  # None when the deepspeed section has a scheduler
    eval_every: int = 200
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    masked_positions_only: bool = True  # MLM logits only where labels are set (sparse head)
    peak_tflops: float | None = None  # per rank; None = the GPU's datasheet peak, else a measured matmul
    prefetch_steps: int | None = None  # steps collated ahead on a thread; None = 2 on CUDA, 0 on the CPU
    compile: bool = False  # torch.compile the model through DeepSpeed's engine.compile()
    output_dir: str | None = None  # default checkpoints/runs/<run_name>
    export: bool = True  # write the consolidated model folder at the end


@dataclass
class PublishSection:
    name: str
    version: str | None = None  # default: "step<N>-<date>"
    registry: str | None = None


@dataclass
class Recipe:
    run_name: str
    model: ModelSection
    data: DataSection
    training: TrainingSection
    deepspeed: dict
    seed: int = 42
    publish: PublishSection | None = None
    stages: list = field(default_factory=list)  # as written in the recipe
    source: str = "<dict>"
    growth_stages: list = field(default_factory=list, repr=False)  # validated pretrain.stages.Stage list

    def to_dict(self) -> dict:
        return _to_dict(self)


SCHEDULE_TYPES = ("piecewise_linear", "warmup_linear", "warmup_cosine", "constant")
SOURCE_TYPES = {
    "embedded": {"type"},
    "text": {"type", "path", "documents", "errors"},
    "jsonl": {"type", "path", "field", "errors"},
    "datasets": {"type", "path", "name", "split", "field"},
}
ERROR_MODES = ("strict", "replace", "skip")  # data.sources[i].errors: undecodable bytes fail, become U+FFFD, or drop the line
POSITION_TYPES = ("natural", "ruoss", "equal_mean")
LAMB_TYPES = ("lamb",)


def _to_dict(obj):
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: _to_dict(getattr(obj, f.name)) for f in fields(obj) if f.name not in ("source", "growth_stages")}
    if isinstance(obj, list):
        return [_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_dict(v) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file (a name without a path looks in pretrain/recipes/)."""
    path = Path(path)
    if not path.is_file() and not path.suffix and (RECIPES_DIR / f"{path}.yaml").is_file():
        path = RECIPES_DIR / f"{path}.yaml"
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}")
    for override in overrides or []:
        apply_override(raw, override, str(path))
    return parse_recipe(raw, source=str(path))


def apply_override(raw: dict, override: str, source: str = "<override>") -> None:
    """`a.b.c=value` (value parsed as YAML) sets raw["a"]["b"]["c"]."""
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise RecipeError(f"override {override!r} must look like section.key=value")
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"{source}: override {override!r}: {'.'.join(parts[: i + 1])} is not a section")
    node[parts[-1]] = yaml.safe_load(value)


def parse_recipe(raw: dict, source: str = "<dict>") -> Recipe:
    raw = copy.deepcopy(raw)
    only_keys(raw, {"run_name", "seed", "model", "data", "training", "deepspeed", "publish", "stages"}, "", source)
    for required in ("run_name", "model", "deepspeed"):
        if required not in raw:
            raise RecipeError(f"{source}: missing required key '{required}'")
    run_name = _typed(raw["run_name"], str, "run_name", source)
    if not run_name or "/" in run_name:
        raise RecipeError(f"{source}: run_name must be a non-empty name without '/', got {run_name!r}")
    recipe = Recipe(
        run_name=run_name,
        seed=_typed(raw.get("seed", 42), int, "seed", source),
        model=_section(ModelSection, raw["model"], "model", source),
        data=_parse_data(raw.get("data", {}), source),
        training=_section(TrainingSection, raw.get("training", {}), "training", source),
        deepspeed=_typed(raw["deepspeed"], dict, "deepspeed", source),
        publish=_section(PublishSection, raw["publish"], "publish", source) if raw.get("publish") else None,
        stages=_typed(raw.get("stages", []) or [], list, "stages", source),
        source=source,
    )
    validate(recipe)
    return recipe


def _parse_data(raw: Any, source: str) -> DataSection:
    raw = dict(_typed(raw, dict, "data", source))
    nested = {
        "masking": (MaskingSection, "data.masking"),
        "positions": (PositionsSection, "data.positions"),
        "heldout": (HeldoutSection, "data.heldout"),
    }
    for key, (cls, where) in nested.items():
        if key in raw:
            raw[key] = _section(cls, raw[key], where, source)
    return _section(DataSection, raw, "data", source, nested=set(nested))


def _section(cls, raw: Any, where: str, source: str, nested: set = frozenset()):
    raw = _typed(raw, dict, where, source)
    allowed = {f.name for f in fields(cls)}
    only_keys(raw, allowed, where + ".", source)
    values = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        value = raw[f.name]
        if f.name not in nested:
            value = _check_type(value, f.type, f"{where}.{f.name}", source)
        values[f.name] = value
    try:
        return cls(**values)
    except TypeError as error:  # a required field is missing
        missing = [f.name for f in fields(cls) if f.name not in raw and f.default is MISSING and f.default_factory is MISSING]
        raise RecipeError(f"{source}: {where}: missing required key(s) {missing}: {error}") from error


_TYPE_NAMES = {"str": str, "int": int, "float": (int, float), "bool": bool, "dict": dict, "list": list}


def _check_type(value: Any, annotation: str, key: str, source: str) -> Any:
    options = [a.strip() for a in str(annotation).split("|")]
    if value is None and "None" in options:
        return value
    for option in options:
        expected = _TYPE_NAMES.get(option)
        if expected is None:
            continue
        if expected is int and isinstance(value, bool):
            continue
        if option == "int" and "bool" in options and isinstance(value, bool):
            return value
        if isinstance(value, expected):
            return float(value) if option == "float" and not isinstance(value, bool) else value
    raise RecipeError(f"{source}: key '{key}' must be {' or '.join(options)}, got {value!r}")


def _typed(value: Any, expected: type, key: str, source: str) -> Any:
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise RecipeError(f"{source}: key '{key}' must be a {expected.__name__}, got {value!r}")
    return value


# --------------------------------------------------------------------------- semantic checks


def validate(recipe: Recipe) -> None:
    src = recipe.source
    model = recipe.model
    chosen = [k for k in ("preset", "family", "init_from") if getattr(model, k)]
    if len(chosen) != 1:
        raise RecipeError(f"{src}: model needs exactly one of model.preset, model.family, model.init_from; got {chosen or 'none'}")
    if model.preset:
        from zoo.presets import PRESETS

        if model.preset not in PRESETS:
            close = difflib.get_close_matches(model.preset, PRESETS, n=3)
            raise RecipeError(f"{src}: model.preset {model.preset!r} is not a preset" + (f" (did you mean {close}?)" if close else ""))
    if model.family:
        from zoo.families import FAMILIES

        if model.family not in FAMILIES:
            raise RecipeError(f"{src}: model.family {model.family!r} is not one of {list(FAMILIES)}")
    if isinstance(model.activation_checkpointing, int) and not isinstance(model.activation_checkpointing, bool):
        if model.activation_checkpointing < 1:
            raise RecipeError(f"{src}: model.activation_checkpointing must be true/false or a layer count ≥ 1")

    data = recipe.data
    if data.seq_len < 8:
        raise RecipeError(f"{src}: data.seq_len must be at least 8, got {data.seq_len}")
    if not data.sources:
        raise RecipeError(f"{src}: data.sources is empty")
    for i, source in enumerate(data.sources):
        key = f"data.sources[{i}]"
        if not isinstance(source, dict) or source.get("type") not in SOURCE_TYPES:
            raise RecipeError(f"{src}: {key} needs a type, one of {list(SOURCE_TYPES)}; got {source!r}")
        only_keys(source, SOURCE_TYPES[source["type"]], key + ".", src)
        if source["type"] in ("text", "jsonl", "datasets") and not source.get("path"):
            raise RecipeError(f"{src}: {key}.path is required for a {source['type']} source")
        if source["type"] == "text" and source.get("documents", "lines") not in ("lines", "paragraphs"):
            raise RecipeError(f"{src}: {key}.documents must be 'lines' or 'paragraphs'")
        if source.get("errors", "strict") not in ERROR_MODES:
            modes = ", ".join(map(repr, ERROR_MODES[:-1])) + f" or {ERROR_MODES[-1]!r}"
            raise RecipeError(f"{src}: {key}.errors must be {modes}, got {source['errors']!r}")
    m = data.masking
    if not 0 < m.rate < 1 or not 0 <= m.mask <= 1 or not 0 <= m.random <= 1 or m.mask + m.random > 1:
        raise RecipeError(f"{src}: data.masking needs 0 < rate < 1 and mask + random ≤ 1, got {m}")
    if data.positions.type not in POSITION_TYPES:
        raise RecipeError(f"{src}: data.positions.type must be one of {POSITION_TYPES}, got {data.positions.type!r}")
    if not 0 < data.heldout.fraction < 1:
        raise RecipeError(f"{src}: data.heldout.fraction must be in (0, 1)")

    training = recipe.training
    for key in ("steps", "eval_every", "checkpoint_every", "keep_checkpoints", "log_every"):
        if getattr(training, key) < 1:
            raise RecipeError(f"{src}: training.{key} must be ≥ 1, got {getattr(training, key)}")
    if training.prefetch_steps is not None and training.prefetch_steps < 0:
        raise RecipeError(f"{src}: training.prefetch_steps must be ≥ 0 (0 = collate each step when it is needed), "
                          f"got {training.prefetch_steps}")
    if training.peak_tflops is not None and training.peak_tflops <= 0:
        raise RecipeError(f"{src}: training.peak_tflops must be > 0, got {training.peak_tflops}")
    ds = recipe.deepspeed
    if training.lr_schedule is not None and "scheduler" in ds:
        raise RecipeError(f"{src}: give the schedule either as training.lr_schedule or deepspeed.scheduler, not both")
    if training.lr_schedule is not None:
        validate_schedule(training.lr_schedule, "training.lr_schedule", src)
    validate_deepspeed(ds, src)
    if recipe.publish is not None:
        from zoo.registry import RegistryError, check_name, check_version

        try:
            check_name(recipe.publish.name)
            if recipe.publish.version is not None:
                check_version(recipe.publish.version)
        except RegistryError as error:
            raise RecipeError(f"{src}: publish: {error}") from error
    if recipe.stages:
        recipe.growth_stages = parse_stages(recipe.stages, recipe)


def validate_schedule(schedule: dict, key: str, src: str) -> None:
    if not isinstance(schedule, dict) or schedule.get("type") not in SCHEDULE_TYPES:
        raise RecipeError(f"{src}: {key}.type must be one of {SCHEDULE_TYPES}, got {schedule!r}")
    kind = schedule["type"]
    allowed = {
        "piecewise_linear": {"type", "points"},
        "warmup_linear": {"type", "warmup", "final"},
        "warmup_cosine": {"type", "warmup", "final"},
        "constant": {"type", "warmup"},
    }[kind]
    only_keys(schedule, allowed, key + ".", src)
    if kind == "piecewise_linear":
        points = schedule.get("points")
        if not isinstance(points, dict) or not points:
            raise RecipeError(f"{src}: {key}.points must map step → lr multiplier, e.g. {{4000: 1.0, 40000: 0.5}}")
        for step, value in points.items():
            if not isinstance(step, int) or step < 0 or not isinstance(value, (int, float)):
                raise RecipeError(f"{src}: {key}.points entry {step!r}: {value!r} must be int step → number")
    for name in ("warmup",):
        if name in schedule and (not isinstance(schedule[name], int) or schedule[name] < 0):
            raise RecipeError(f"{src}: {key}.{name} must be a non-negative int")


def validate_deepspeed(ds: dict, src: str) -> None:
    from deepspeed.runtime.config import DeepSpeedConfigError, _reject_removed_config_keys

    try:
        _reject_removed_config_keys(ds)
    except DeepSpeedConfigError as error:
        raise RecipeError(f"{src}: deepspeed section: {error}") from error
    from .deepspeed_keys import deepspeed_key_error  # every key, at any depth, is one DeepSpeed reads

    problem = deepspeed_key_error(ds, src)
    if problem is not None:
        raise RecipeError(problem)
    _refuse_checkpoint_modes(ds.get("checkpoint"), src)
    batch_keys = [k for k in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps") if k in ds]
    if len(batch_keys) < 2:
        raise RecipeError(
            f"{src}: deepspeed needs two of train_batch_size, train_micro_batch_size_per_gpu, gradient_accumulation_steps"
        )
    for key in batch_keys:
        if not isinstance(ds[key], int) or ds[key] < 1:
            raise RecipeError(f"{src}: deepspeed.{key} must be a positive int, got {ds[key]!r}")
    optimizer = ds.get("optimizer")
    if optimizer is not None:
        if not isinstance(optimizer, dict) or "type" not in optimizer:
            raise RecipeError(f"{src}: deepspeed.optimizer needs a type")
        stage = ds.get("zero_optimization", {}).get("stage", 0)
        bf16 = next((key for key in ("bf16", "bfloat16") if isinstance(ds.get(key), dict) and ds[key].get("enabled")), None)
        if optimizer["type"].lower() in LAMB_TYPES and bf16 is not None:
            raise RecipeError(
                f"{src}: deepspeed.{bf16}.enabled with optimizer Lamb: DeepSpeed's bf16 mode hands the optimizer bf16 "
                "gradients, and on CUDA its FusedLamb kernel takes fp32 and fp16 ones only (\"lamb_cuda_kernel\" not "
                "implemented for 'BFloat16'); use deepspeed.torch_autocast: {enabled: true, dtype: bfloat16} instead "
                "(fp32 weights and gradients, bf16 matrix products), as the published recipes do"
            )
        if optimizer["type"].lower() in LAMB_TYPES and stage > 0:
            raise RecipeError(
                f"{src}: deepspeed.zero_optimization.stage={stage} with optimizer Lamb: LAMB's layer-wise trust "
                "ratio needs whole parameter tensors, but ZeRO ≥ 1 hands the optimizer flat partitions; use stage 0 "
                "(the published recipes do) or an Adam-type optimizer"
            )


def _refuse_checkpoint_modes(checkpoint, src: str) -> None:
    """DeepSpeed checkpoint modes that DeepSpeed reads but this trainer cannot honour: its COMPLETE marker
    (pretrain/checkpoint.py) says every rank's files of a tag are written and readable from
    training.output_dir, which it knows only once save_checkpoint has written them there."""
    if not isinstance(checkpoint, dict):
        return
    writer = checkpoint.get("writer")
    if isinstance(writer, dict) and writer.get("decoupled"):
        raise RecipeError(
            f"{src}: deepspeed.checkpoint.writer.decoupled: true is not supported: the decoupled writer saves in a "
            "background process and commits the files only at the next training step (never after the last step or "
            "a growth), so a checkpoint would be marked COMPLETE before its files exist; remove the key")
    if checkpoint.get("use_node_local_storage"):
        raise RecipeError(
            f"{src}: deepspeed.checkpoint.use_node_local_storage: true is not supported: each node would keep its "
            "part of a checkpoint on its own disk, which a resume, the export and the COMPLETE marker (written by "
            "rank 0) cannot see; remove the key and put training.output_dir on a file system every node sees")
