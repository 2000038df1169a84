"""`python -m pretrain --config RECIPE [key=value ...]` (one process) or, with the DeepSpeed launcher,
`deepspeed [--num_gpus N | --hostfile H] --module pretrain --config RECIPE [key=value ...]`."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pretrain", description=__doc__)
    parser.add_argument("--config", required=True, help="recipe YAML file (or the name of one in pretrain/recipes/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.steps=100 deepspeed.train_batch_size=32")
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="continue from a checkpoint of this run: the latest (default), a tag or a step; 'auto': "
                             "the latest if there is one, else start afresh (for a job that a scheduler starts again "
                             "with the same command: SLURM --requeue, torchrun --max-restarts)")
    parser.add_argument("--restart", action="store_true", help="delete this run's outputs and start over")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # added by the launcher
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.restart and args.resume is not None:
        parser.error("--restart deletes the run that --resume continues: give one of them")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .errors import PretrainError
    from .recipe import RecipeError, load_recipe

    try:
        recipe = load_recipe(args.config, args.overrides)
    except RecipeError as error:
        print(f"pretrain: {error}", file=sys.stderr)
        return 2
    from . import rank_failure
    from .trainer import Trainer, close_distributed

    # The project's own errors (recipe, data, run state, a non-finite loss) are one line; anything
    # else is a bug or an environment problem and keeps its traceback.
    trainer = None
    # A rank that stops on an error tells the others (pretrain/rank_failure.py), which stop at once
    # instead of waiting for it in their next collective.
    try:
        trainer = Trainer(recipe, resume=args.resume, restart=args.restart)
        result = trainer.train()
    except PretrainError as error:
        if not error.mirrored:  # a copy of rank 0's error is printed and announced there, once
            print(f"pretrain: {error}", file=sys.stderr, flush=True)
            rank_failure.announce(f"failed: {_first_line(error)}")
        close_distributed(barrier=False)  # the other ranks may be anywhere: do not wait for them
        return 1
    except RuntimeError as error:
        message = lost_peer_message(error, trainer)
        if message is None:
            _tell_before_the_traceback(error, trainer)
            raise
        print(message, file=sys.stderr, flush=True)  # and leave without a collective: the peer will not answer
        rank_failure.announce("lost contact with another rank")
        return 1
    except BaseException as error:  # a bug, an interrupt: the traceback follows
        _tell_before_the_traceback(error, trainer)
        raise
    if trainer.rank == 0:
        print(f"pretrain: finished {recipe.run_name} at step {result.step}; outputs in {result.output_dir}")
        if result.final_eval:
            print(f"pretrain: held-out masked-token accuracy {result.final_eval['mlm_accuracy']:.2%}, "
                  f"loss {result.final_eval['mlm_loss']:.3f}")
        if result.published:
            print(f"pretrain: published {result.published}")
    trainer.close()
    return 0


def _tell_before_the_traceback(error: BaseException, trainer) -> None:
    """An unexpected error: the other ranks hear of it (pretrain/rank_failure.py), rank 0 names the checkpoint
    to resume from, and the traceback follows."""
    from . import rank_failure

    rank_failure.announce(f"failed: {_first_line(error)}")
    if trainer is not None:
        trainer.say_where_to_resume()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


# What gloo and torch.distributed say when a peer rank is gone (killed: the connection drops at once)
# or stopped answering (a hung or unreachable node: the process group's timeout, ZOO_DIST_TIMEOUT_S).
_PEER_LOST = ("gloo/transport", "Connection reset by peer", "Connection closed by peer", "Broken pipe",
              "Timed out waiting", "failed to recv")


def lost_peer_message(error: RuntimeError, trainer) -> str | None:
    """One paragraph for a collective that failed because another rank is gone; None for other errors."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    if not (isinstance(error, dist.DistError) or any(marker in str(error) for marker in _PEER_LOST)):
        return None
    from .checkpoint import resume_hint
    from .trainer import DIST_TIMEOUT_S

    lines = str(error).strip().splitlines() or [type(error).__name__]
    cause = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]).split(" This is typically caused")[0].rstrip(".")
    where = f" after step {trainer.step}" if trainer is not None else " while setting up"
    message = (f"pretrain: rank {dist.get_rank()} of {dist.get_world_size()} lost contact with another rank{where} "
               f"(a node or rank was killed or crashed, or did not answer within ZOO_DIST_TIMEOUT_S="
               f"{os.environ.get('ZOO_DIST_TIMEOUT_S', DIST_TIMEOUT_S)} s), so it stops too: {cause}.")
    if trainer is not None:
        message += f" {resume_hint(trainer.checkpoint_dir)}"
    return message


if __name__ == "__main__":
    sys.exit(main())
