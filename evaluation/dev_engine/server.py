"""`quasar engine serve`: the development engine, a transformers model behind TGI's and OpenAI's HTTP APIs.

Miners talk to their engine through TGI's HTTP API (tgi.py); vLLM and SGLang, and tools such as
`quasar eval run --engine openai`, speak OpenAI's (openai_api.py). This server answers both from a
transformers model on CPU (CUDA when available), so mock mode and tests go through exactly the production
path: the same clients, the same JSON shapes, the same errors. The built-in tiny model
(evaluation.local_model) is the default; `--model` also takes a local folder or a Hub id in the HF cache.

It starts listening only once the model is loaded, serves through evaluation.http_guard (timeouts, no
reading of refused bodies, a per-peer connection limit) and runs one request at a time (model.py).
"""

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiohttp import web

from evaluation.cli import SubcommandParser
from evaluation.dev_engine import model
from evaluation.dev_engine.model import Generator, ServedModel
from evaluation.dev_engine.openai_api import OpenAIRoutes
from evaluation.dev_engine.tgi import TGIRoutes
from evaluation.engines import EngineError, load_local_model
from evaluation.http_guard import GuardedSite, GuardLimits, serve_guarded
from evaluation.local_model import BUILTIN_MODELS, LOCAL_MAX_TOTAL_TOKENS, TINY_MODEL, resolve_model

log = logging.getLogger("quasar.engine")

DEFAULT_PAYLOAD_LIMIT = 64 * 1024 * 1024  # bytes: a 2M-token prompt is ~8 MB of text, TGI's 2 MB is too small
# The guard's defaults (timeouts, ...), but room for every request TGI's limit lets in from one peer (mock
# mode's miners all connect from 127.0.0.1), plus /health and /metrics, so the 429 stays reachable.
GUARD_LIMITS = GuardLimits(max_connections_per_peer=2 * model.MAX_CONCURRENT_REQUESTS)


@dataclass
class RunningEngineServer:
    url: str
    server: ServedModel
    site: GuardedSite = field(repr=False)

    async def stop(self) -> None:
        """Stop listening; running generations are told to stop and given the shutdown timeout to end."""
        await self.site.stop()


async def start_engine_server(
    model: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    max_input_tokens: int | None = None,
    max_total_tokens: int | None = None,
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
    shutdown_timeout_s: float = 5.0,
) -> RunningEngineServer:
    """Load the model, then listen (port 0: an ephemeral port). Limits default to the model's context
    (its max_position_embeddings) and one token less for the prompt, as TGI's do. On stop(), running
    requests get `shutdown_timeout_s` to finish (short: tests and mock mode; the CLI gives TGI's 90 s).
    Raises EngineError when the model cannot be loaded, ValueError on inconsistent limits."""
    source = await asyncio.to_thread(resolve_model, model)
    loaded = await asyncio.to_thread(load_local_model, f"local:{source}", source)
    total = max_total_tokens or loaded.max_total_tokens or LOCAL_MAX_TOTAL_TOKENS
    max_input = max_input_tokens or total - 1
    if not 0 < max_input < total:  # TGI refuses to start on these too
        raise ValueError(f"max input tokens ({max_input}) must be < max total tokens ({total}) and positive")
    if payload_limit <= 0:
        raise ValueError(f"the payload limit must be positive, got {payload_limit}")
    # /info names the model as given, as TGI echoes its --model-id: miners compare it with their flag.
    served = ServedModel(Generator(loaded), model or TINY_MODEL, max_input, total)
    # The payload limit is enforced by each API with its own message; this only bounds memory.
    app = web.Application(client_max_size=payload_limit)
    TGIRoutes(served, payload_limit).add_to(app)
    OpenAIRoutes(served, payload_limit).add_to(app)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family)
    # handler_cancellation: a client that hangs up cancels its handler, which stops its generation.
    site = await serve_guarded(
        app,
        sock,
        GUARD_LIMITS,
        handle_signals=False,
        handler_cancellation=True,
        shutdown_timeout=shutdown_timeout_s,
    )
    return RunningEngineServer(f"http://{_url_host(site.host)}:{site.port}", served, site)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def main(argv: Sequence[str], prog: str) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="A local inference engine speaking TGI's and OpenAI's HTTP APIs."
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=SubcommandParser)
    serve = commands.add_parser(
        "serve",
        help="serve a model over TGI's and OpenAI's HTTP APIs until interrupted",
    )
    serve.add_argument(
        "--model",
        default=TINY_MODEL,
        help=f"a model folder, a Hub id, or built-in: {', '.join(BUILTIN_MODELS)} (default: %(default)s)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default: %(default)s)")
    serve.add_argument(
        "--max-input-tokens", type=_positive, help="prompt tokens at most (unset: max total tokens - 1)"
    )
    serve.add_argument(
        "--max-total-tokens",
        type=_positive,
        help=f"prompt + new tokens at most (unset: the model's context, {LOCAL_MAX_TOTAL_TOKENS} for tiny)",
    )
    serve.add_argument(
        "--payload-limit",
        type=_positive,
        default=DEFAULT_PAYLOAD_LIMIT,
        help="request body bytes at most (default: %(default)s, 64 MiB)",
    )
    serve.add_argument(
        "--graceful-termination-timeout",
        type=float,
        default=90.0,
        help="seconds running requests get on exit (default: %(default)s)",
    )
    args = parser.parse_args(list(argv))
    # INFO also turns on aiohttp's access log: one line per request.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(args))
    except (EngineError, ValueError, OSError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


async def _serve(args: argparse.Namespace) -> None:
    log.info("loading %s ...", args.model)
    running = await start_engine_server(
        args.model,
        args.host,
        args.port,
        args.max_input_tokens,
        args.max_total_tokens,
        args.payload_limit,
        args.graceful_termination_timeout,
    )
    server = running.server
    log.info(
        "serving %s at %s (max input tokens %d, max total tokens %d)",
        server.model_id,
        running.url,
        server.max_input_tokens,
        server.max_total_tokens,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping: running and queued requests may finish ...")
    await running.stop()
