"""`vllm serve`'s own parser over argument lists (the model first, as `vllm serve MODEL ...` takes it):
parse.py says how it is run. The vLLM venv's interpreter runs it (install.py)."""

import vllm.platforms
from vllm.platforms.cpu import CpuPlatform

from scripts.engine_parsers.parse import main

# The parser's defaults come from the platform, which vLLM infers from the GPU; this machine has none, so
# it is named. Which flags exist and how they are read do not depend on it.
vllm.platforms._current_platform = CpuPlatform()

from vllm.entrypoints.openai.cli_args import make_arg_parser  # noqa: E402 (after the platform is set)
from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: E402

if __name__ == "__main__":
    main(make_arg_parser(FlexibleArgumentParser(prog="vllm serve")))
