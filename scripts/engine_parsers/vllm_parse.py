"""Parse argument lists with `vllm serve`'s own parser. Run by the vLLM venv's interpreter (install.py):
`python vllm_parse.py OUT < argument-lists.json`, where the input is a JSON list of argument lists (the model
first, as `vllm serve MODEL ...` takes it). OUT gets, per list, `{"flags": {argparse name: value}}` or
`{"error": the parser's message}`. A file, not stdout: vLLM logs to stdout.
"""

import contextlib
import io
import json
import sys
from typing import Any

import vllm.platforms
from vllm.platforms.cpu import CpuPlatform

# The parser's defaults come from the platform, which vLLM infers from the GPU; this machine has none, so
# it is named. Which flags exist and how they are read do not depend on it.
vllm.platforms._current_platform = CpuPlatform()

from vllm.entrypoints.openai.cli_args import make_arg_parser  # noqa: E402 (after the platform is set)
from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: E402


def parse(parser: FlexibleArgumentParser, args: list[str]) -> dict[str, Any]:
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            namespace = parser.parse_args(args)
    except SystemExit:
        lines = errors.getvalue().strip().splitlines()
        return {"error": lines[-1] if lines else "exit"}
    return {"flags": vars(namespace)}


def main() -> None:
    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
    results = [parse(parser, args) for args in json.load(sys.stdin)]
    with open(sys.argv[1], "w", encoding="utf-8") as out:
        json.dump(results, out, default=repr)


if __name__ == "__main__":
    main()
