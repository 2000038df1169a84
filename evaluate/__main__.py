"""`python -m evaluate <command> ...`: dispatch to the command's own argument parser."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "clue": ("evaluate.clue.cli", "CLUE fine-tuning, dev scores, test predictions and the submission zip"),
    "extrapolation": ("evaluate.extrapolation", "masked-token accuracy at 1–16× the training length"),
    "robustness": ("evaluate.robustness", "accuracy under shifted, strided and sampled position ids"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m evaluate {" + ",".join(COMMANDS) + "} ...\n")
        for name, (_, help) in COMMANDS.items():
            print(f"  {name:14} {help}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
