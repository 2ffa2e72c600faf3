"""`python -m sglang.launch_server`'s own parser over argument lists: parse.py says how it is run. The
SGLang venv's interpreter runs it (install.py). launch_server builds its parser so (prepare_server_args)."""

import argparse

from sglang.srt.server_args import ServerArgs

from scripts.engine_parsers.parse import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="sglang.launch_server")
    ServerArgs.add_cli_args(parser)
    main(parser)
