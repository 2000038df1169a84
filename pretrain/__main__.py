"""`python -m pretrain --config RECIPE [key=value ...]` (one process) or, with the DeepSpeed launcher,
`deepspeed [--num_gpus N | --hostfile H] --module pretrain --config RECIPE [key=value ...]`."""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pretrain", description=__doc__)
    parser.add_argument("--config", required=True, help="recipe YAML file (or the name of one in pretrain/recipes/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.steps=100 deepspeed.train_batch_size=32")
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="continue from a checkpoint of this run: the latest (default), a tag or a step")
    parser.add_argument("--restart", action="store_true", help="delete this run's outputs and start over")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # added by the launcher
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .recipe import RecipeError, load_recipe

    try:
        recipe = load_recipe(args.config, args.overrides)
    except RecipeError as error:
        print(f"pretrain: {error}", file=sys.stderr)
        return 2
    from .data import CorpusError
    from .trainer import NonFiniteLossError, Trainer

    trainer = None
    try:
        trainer = Trainer(recipe, resume=args.resume, restart=args.restart)
        result = trainer.train()
    except (CorpusError, FileExistsError, FileNotFoundError, NonFiniteLossError, ValueError) as error:
        print(f"pretrain: {error}", file=sys.stderr)
        if trainer is not None:
            trainer.close()
        return 1
    if trainer.rank == 0:
        print(f"pretrain: finished {recipe.run_name} at step {result.step}; outputs in {result.output_dir}")
        if result.final_eval:
            print(f"pretrain: held-out masked-token accuracy {result.final_eval['mlm_accuracy']:.2%}, "
                  f"loss {result.final_eval['mlm_loss']:.3f}")
        if result.published:
            print(f"pretrain: published {result.published}")
    trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
