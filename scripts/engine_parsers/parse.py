"""Run an engine's own argument parser over argument lists, for tests/test_engine_args.py. Imported by
vllm_parse.py and sglang_parse.py, which run in the engines' venvs (install.py) and make the parser:
`python -m scripts.engine_parsers.vllm_parse OUT < argument-lists.json`, from the repository root. The
input is a JSON list of argument lists; OUT gets, per list, `{"flags": {argparse name: value}}` or
`{"error": the parser's message}`. A file, not stdout: the engines log to stdout.
"""

import argparse
import contextlib
import io
import json
import sys
from typing import Any


def parse(parser: argparse.ArgumentParser, args: list[str]) -> dict[str, Any]:
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            namespace = parser.parse_args(args)
    except SystemExit:
        lines = errors.getvalue().strip().splitlines()
        return {"error": lines[-1] if lines else "exit"}
    return {"flags": vars(namespace)}


def main(parser: argparse.ArgumentParser) -> None:
    results = [parse(parser, args) for args in json.load(sys.stdin)]
    with open(sys.argv[1], "w", encoding="utf-8") as out:
        json.dump(results, out, default=repr)
