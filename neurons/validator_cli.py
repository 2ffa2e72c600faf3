"""`quasar validator` / `python neurons/validator.py`: the validator's command line, real or mock mode.

It sits above both: the validator (neurons/validator.py) knows nothing of mock mode, and mock mode
(neurons/mock.py) is built on the validator.
"""

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from evaluation.errors import InputError
from neurons.chain import ChainError
from neurons.mock import add_mock_flags, mock_config_from_args, run_mock
from neurons.state import StateError
from neurons.validator import build_parser as build_validator_parser
from neurons.validator import config_from_args, run_real, wandb_factory

# One line per HTTP request from in-process servers and engine clients (mock mode) drowns the rounds.
_NOISY_LOGGERS = ("aiohttp.access", "httpx2", "httpx")


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = build_validator_parser(prog)
    add_mock_flags(parser)
    return parser


def main(argv: Sequence[str], prog: str = "quasar validator") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.debug:
        for noisy in _NOISY_LOGGERS:
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = config_from_args(args)
        if args.mock:
            # Mock mode prints its own progress; WandB's banners would bury it.
            os.environ.setdefault("WANDB_SILENT", "true")
            mock = mock_config_from_args(args)
            return asyncio.run(run_mock(config, mock, wandb_factory(args, offline=True), args.debug))
        return asyncio.run(run_real(config, wandb_factory(args)))
    except (InputError, StateError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ChainError as error:
        print(f"error: chain: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], "neurons/validator_cli.py"))
