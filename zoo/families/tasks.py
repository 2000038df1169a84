"""The tasks every family has a model class for, and how a family gets them.

`TASKS` maps a task name to the transformers Auto class (None where transformers has none) and the
class-name suffix. A family's model class for a task is the shared class of zoo/modeling.py with the
family's config class bound and the family's name (`RoFormerV2ForMaskedLM`): `family_models` makes
them, so the classes have one definition whatever the family.
"""

from __future__ import annotations

from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from ..modeling import (
    EncoderForGlobalPointer,
    EncoderForMaskedLM,
    EncoderForMultipleChoice,
    EncoderForQuestionAnswering,
    EncoderForSequenceClassification,
    EncoderForTokenClassification,
    EncoderModel,
)

TASKS = {
    "base": (AutoModel, "Model"),
    "masked-lm": (AutoModelForMaskedLM, "ForMaskedLM"),
    "sequence-classification": (AutoModelForSequenceClassification, "ForSequenceClassification"),
    "token-classification": (AutoModelForTokenClassification, "ForTokenClassification"),
    "question-answering": (AutoModelForQuestionAnswering, "ForQuestionAnswering"),
    "multiple-choice": (AutoModelForMultipleChoice, "ForMultipleChoice"),
    "global-pointer": (None, "ForGlobalPointer"),
}

SHARED_CLASSES = {
    "base": EncoderModel,
    "masked-lm": EncoderForMaskedLM,
    "sequence-classification": EncoderForSequenceClassification,
    "token-classification": EncoderForTokenClassification,
    "question-answering": EncoderForQuestionAnswering,
    "multiple-choice": EncoderForMultipleChoice,
    "global-pointer": EncoderForGlobalPointer,
}


def family_models(prefix: str, config_class) -> dict[str, type]:
    """task → `<prefix><suffix>`, a subclass of the task's shared class that binds `config_class`,
    defined in (and picklable from) the config class's module."""
    models = {}
    for task, (_, suffix) in TASKS.items():
        shared = SHARED_CLASSES[task]
        name = prefix + suffix
        models[task] = type(name, (shared,), {
            "config_class": config_class,
            "__module__": config_class.__module__,
            "__qualname__": name,
            "__doc__": f"{shared.__doc__.splitlines()[0]} ({prefix}; see {shared.__name__})",
        })
    return models
