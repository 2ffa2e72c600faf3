"""The `quasar` console entry point.

Each command group lives with its own package and is imported only when used, so an image that
carries one group's dependencies (the operator has no torch) runs that group without the others.
"""

import argparse
import importlib
import sys
from collections.abc import Sequence

# group name -> (module exposing `main(argv, prog) -> int`, help text)
GROUPS: dict[str, tuple[str, str]] = {
    "eval": ("evaluation.cli", "score predictions and evaluate long-context endpoints"),
    "miner": ("neurons.miner", "serve a long-context model to validators (signed, permit-checked queries)"),
    "validator": (
        "neurons.validator_cli",
        "score miners on long-context tasks and set weights (--mock: local)",
    ),
    "engine": (
        "evaluation.dev_engine.server",
        "a development engine over a local model: TGI and OpenAI APIs",
    ),
    "operator": ("quasar_operator.cli", "run the Kubernetes operator"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quasar", description="QUASAR long-context subnet tools.")
    commands = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    for name, (_, help_text) in GROUPS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    module = importlib.import_module(GROUPS[args.group][0])
    status: int = module.main(rest, prog=f"quasar {args.group}")
    return status


if __name__ == "__main__":
    sys.exit(main())
