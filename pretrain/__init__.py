"""pretrain: the DeepSpeed pretraining stack (recipes, data, trainer, checkpoints).

    deepspeed --num_gpus 2 --module pretrain --config pretrain/recipes/roformer-v2-tiny.yaml
    python -m pretrain --config roformer-v2-tiny training.steps=100
"""

from .recipe import Recipe, RecipeError, load_recipe

__all__ = ["Recipe", "RecipeError", "load_recipe"]
