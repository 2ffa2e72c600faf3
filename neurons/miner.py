"""The QUASAR miner: answers validators' long-context queries through an inference engine.

`python neurons/miner.py ...` or `quasar miner ...`. Two aiohttp servers: the axon, which validators reach
(its address is public on chain), and the Prometheus page on a port of its own (--metrics.port).

The axon:

- `POST /v1/query` (protocol.QUERY_PATH): checks run cheapest first, and everything that can refuse a
  request without its body runs before the body is read: the claimed caller hotkey, each authentication
  header once (401), the metagraph rules (registered, validator permit, minimum stake: 403 naming the
  rule), the declared size (413); then the signature over the raw body (401; the hotkey it verifies is the
  claimed one, and is checked against the metagraph again), the request's fields (400 naming the field,
  `max_new_tokens` within this miner's cap) and its deadline (408). The engine's refusals come back as
  HTTP statuses a validator can act on: engine unreachable 503, no answer before the deadline 504, prompt
  over the engine's token limits 413 with the numbers (counted here with --engine.tokenizer before
  sending, else the engine's own refusal). TGI is asked through `/generate`, vLLM and SGLang through
  their OpenAI API (chat or completions, --engine.api).
- `GET /healthz` (the process is alive), `GET /readyz` (the engine passes its checks, TGI `/info`, vLLM
  `/health` and `/v1/models`, SGLang `/v1/models`, with the configured model, and this hotkey's endpoint
  on chain is the one announced): the kubelet's probes.

The metrics listener: `GET /metrics` only, by default on 127.0.0.1 (the operator gives the pod's every
address; its public Service carries the axon port alone).

The metagraph is re-read every `sync_interval_s`; each sync also re-announces the endpoint when the
chain shows another one (first start, a changed address, re-registration).
"""

import argparse
import asyncio
import ipaddress
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from evaluation.engines import Engine, EngineApi, EngineError, EngineInfo, make_engine
from evaluation.errors import InputError
from evaluation.http_guard import GuardedSite, GuardLimits, GuardStats, serve_guarded
from evaluation.tasks import TASKS
from evaluation.tokenizer import Tokenizer, load_tokenizer
from neurons import protocol
from neurons.auth import AuthError, RequestVerifier, read_claim
from neurons.chain import Chain, ChainError, MetagraphSnapshot
from neurons.flags import add_wallet_and_chain_arguments
from neurons.metrics_server import page_url, serve_metrics

log = logging.getLogger("quasar.miner")

EngineKindFlag = Literal["tgi", "vllm", "sglang", "openai"]
ENGINE_KIND_FLAGS: tuple[EngineKindFlag, ...] = ("tgi", "vllm", "sglang", "openai")
DEFAULT_MIN_STAKE = 1000.0
# A 2M-token prefill on one node takes many minutes; the request's own deadline usually bounds it first.
DEFAULT_ENGINE_TIMEOUT_S = 3600.0
DEFAULT_AXON_PORT = 8091  # bittensor's default axon port, kept so seed deployments need no new flag
# The axon's 8091 + 1000: clear of the axon ports of miners numbered one after another on one host.
DEFAULT_METRICS_PORT = 9091
# Loopback: a miner on a machine of its own must not hand its metrics to the internet. In a pod, Prometheus
# scrapes the pod's address: the operator passes --metrics.host 0.0.0.0.
DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_ENGINE_URL = "http://127.0.0.1:8080"  # `quasar engine serve`'s default address
# Readiness probes and queries share one engine /info call per this many seconds.
ENGINE_PROBE_TTL_S = 5.0
# /info is answered by TGI's router even while a long prefill runs: a slow answer means trouble.
ENGINE_PROBE_TIMEOUT_S = 10.0
# The longest answer any task asks for: a validator has no reason to ask for more, an attacker every reason.
DEFAULT_MAX_NEW_TOKENS = max(task.max_new_tokens for task in TASKS.values())
LATENCY_BUCKETS_S = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)


@dataclass(frozen=True)
class MinerConfig:
    """Everything the flags say; fields without a flag are tuning knobs for tests and mock mode."""

    netuid: int
    wallet_name: str = "default"
    wallet_hotkey: str = "default"
    wallet_path: str = "~/.bittensor/wallets"
    network: str | None = "finney"
    chain_endpoint: str | None = None
    axon_port: int = DEFAULT_AXON_PORT
    external_ip: str | None = None  # None: the address the server binds (mock mode, tests)
    external_port: int | None = None  # None: the port the server binds
    metrics_host: str = DEFAULT_METRICS_HOST
    metrics_port: int = DEFAULT_METRICS_PORT
    model_name: str | None = None
    engine_url: str = DEFAULT_ENGINE_URL
    engine_kind: EngineKindFlag = "tgi"
    engine_api: EngineApi = (
        "chat"  # OpenAI-compatible engines only: chat (server-side template) or completions
    )
    engine_tokenizer: str | None = None  # the engine's tokenizer: oversized prompts refused before sending
    engine_timeout_s: float = DEFAULT_ENGINE_TIMEOUT_S
    min_stake: float = DEFAULT_MIN_STAKE
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    debug: bool = False
    sync_interval_s: float = 60.0
    engine_probe_ttl_s: float = ENGINE_PROBE_TTL_S
    guard: GuardLimits = field(default_factory=GuardLimits)  # HTTP timeouts and limits (http_guard)


# ---------------------------------------------------------------------------------------------------------
# Flags


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="QUASAR miner: answer validators' long-context queries through an engine."
    )
    add_wallet_and_chain_arguments(parser, netuid_required=True)
    axon = parser.add_argument_group("axon (this miner's HTTP server)")
    axon.add_argument(
        "--axon.port",
        dest="axon_port",
        type=int,
        default=DEFAULT_AXON_PORT,
        help=f"port to listen on, all interfaces (default: {DEFAULT_AXON_PORT})",
    )
    axon.add_argument(
        "--axon.external_ip",
        dest="external_ip",
        help="address validators reach this miner at, announced on chain (required)",
    )
    axon.add_argument(
        "--axon.external_port",
        dest="external_port",
        type=int,
        help="port validators reach this miner at (default: --axon.port)",
    )
    metrics = parser.add_argument_group("metrics (Prometheus, apart from the axon)")
    metrics.add_argument(
        "--metrics.port",
        dest="metrics_port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help="serve GET /metrics at this port, never on the axon's; 0 for any free one "
        f"(default: {DEFAULT_METRICS_PORT})",
    )
    metrics.add_argument(
        "--metrics.host",
        dest="metrics_host",
        default=DEFAULT_METRICS_HOST,
        help="address the metrics server listens on; 0.0.0.0 where Prometheus scrapes from elsewhere "
        f"(a pod) (default: {DEFAULT_METRICS_HOST}, this machine only)",
    )
    engine = parser.add_argument_group("engine")
    engine.add_argument(
        "--miner.model_name",
        dest="model_name",
        help="the model the engine serves: sent as `model` to OpenAI-compatible engines; "
        "a TGI engine serving another model_id is refused",
    )
    engine.add_argument("--engine.url", dest="engine_url", default=DEFAULT_ENGINE_URL, help="engine base URL")
    engine.add_argument(
        "--engine.kind",
        dest="engine_kind",
        choices=ENGINE_KIND_FLAGS,
        default="tgi",
        help="the engine: tgi (TGI's /generate), vllm or sglang (their OpenAI API, limits and health), "
        "openai (any other OpenAI-compatible server) (default: tgi)",
    )
    engine.add_argument(
        "--engine.api",
        dest="engine_api",
        choices=["chat", "completions"],
        help="for vllm, sglang, openai: chat (/v1/chat/completions, the server applies the model's chat "
        "template: instruct models) or completions (/v1/completions, the prompt as is: base models) "
        "(default: chat)",
    )
    engine.add_argument(
        "--engine.tokenizer",
        dest="engine_tokenizer",
        help="the engine's tokenizer (a folder or Hub id, as the engine loads it): prompts that cannot fit "
        "the engine's context are refused with 413 before they are sent (default: none, the engine refuses)",
    )
    engine.add_argument(
        "--engine.timeout",
        dest="engine_timeout",
        type=float,
        default=DEFAULT_ENGINE_TIMEOUT_S,
        help="most seconds one generation may take; a request's deadline may cut it shorter (default: 3600)",
    )
    engine.add_argument(
        "--miner.max_new_tokens",
        dest="max_new_tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help="most new tokens a query may ask for; more is refused with 400 "
        f"(default: {DEFAULT_MAX_NEW_TOKENS}, the largest any task asks for)",
    )
    parser.add_argument(
        "--blacklist.min_stake",
        dest="min_stake",
        type=float,
        default=DEFAULT_MIN_STAKE,
        help=f"least stake a validator needs to be served (default: {DEFAULT_MIN_STAKE:g})",
    )
    parser.add_argument("--logging.debug", dest="debug", action="store_true", help="debug logging")
    return parser


def config_from_args(args: argparse.Namespace) -> MinerConfig:
    """The config the parsed flags describe; raises InputError naming the flag that is wrong."""
    ports = (
        ("--axon.port", args.axon_port),
        ("--axon.external_port", args.external_port),
        ("--metrics.port", args.metrics_port),
    )
    for flag, port in ports:
        if port is not None and not 0 <= port <= 65535:
            raise InputError(flag, f"not a TCP port: {port}")
    if args.metrics_port != 0 and args.metrics_port == args.axon_port:
        raise InputError("--metrics.port", f"{args.metrics_port} is the axon's port; metrics need their own")
    if args.engine_timeout <= 0:
        raise InputError("--engine.timeout", f"must be positive, got {args.engine_timeout:g}")
    if args.max_new_tokens < 1:
        raise InputError("--miner.max_new_tokens", f"must be at least 1, got {args.max_new_tokens}")
    if args.min_stake < 0:
        raise InputError("--blacklist.min_stake", f"must not be negative, got {args.min_stake:g}")
    if not args.engine_url.startswith(("http://", "https://")):
        raise InputError("--engine.url", f"needs an http(s):// base URL, got {args.engine_url!r}")
    if args.netuid < 0:
        raise InputError("--netuid", f"must not be negative, got {args.netuid}")
    if args.engine_kind == "tgi" and args.engine_api is not None:
        raise InputError(
            "--engine.api", "TGI is asked through its /generate; the flag is for vllm, sglang, openai"
        )
    external_ip = None
    if args.external_ip is not None:
        # The chain stores an address as a number: a host name cannot be announced. Canonical form, so
        # the endpoint read back from the chain compares equal to the one announced.
        try:
            external_ip = str(ipaddress.ip_address(args.external_ip))
        except ValueError:
            raise InputError("--axon.external_ip", f"not an IP address: {args.external_ip!r}") from None
    return MinerConfig(
        netuid=args.netuid,
        wallet_name=args.wallet_name,
        wallet_hotkey=args.wallet_hotkey,
        wallet_path=args.wallet_path,
        network=args.network,
        chain_endpoint=args.chain_endpoint,
        axon_port=args.axon_port,
        external_ip=external_ip,
        external_port=args.external_port,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        model_name=args.model_name,
        engine_url=args.engine_url,
        engine_kind=args.engine_kind,
        engine_api=args.engine_api or "chat",
        engine_tokenizer=args.engine_tokenizer,
        engine_timeout_s=args.engine_timeout,
        min_stake=args.min_stake,
        max_new_tokens=args.max_new_tokens,
        debug=args.debug,
    )


# ---------------------------------------------------------------------------------------------------------
# The checks, as pure functions of what they look at


@dataclass(frozen=True)
class Refusal:
    """A request the miner will not (or cannot) answer: the HTTP status, the metrics outcome, and a JSON
    body whose `reason` says why in words and whose other keys name the rule, field or numbers."""

    status: int
    outcome: str
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"error": self.outcome, "reason": self.reason, **self.details}


def check_caller(hotkey: str, snapshot: MetagraphSnapshot, min_stake: float) -> Refusal | None:
    """403 unless the caller is a registered validator with a permit and enough stake."""
    neuron = snapshot.by_hotkey(hotkey)
    if neuron is None:
        return Refusal(
            403,
            "forbidden",
            f"hotkey {hotkey} is not registered on netuid {snapshot.netuid}",
            {"rule": "registered"},
        )
    if not neuron.validator_permit:
        return Refusal(
            403, "forbidden", f"uid {neuron.uid} has no validator permit", {"rule": "validator_permit"}
        )
    if neuron.stake < min_stake:
        return Refusal(
            403,
            "forbidden",
            f"uid {neuron.uid} has stake {neuron.stake:g}, below the {min_stake:g} this miner requires",
            {"rule": "min_stake", "stake": neuron.stake, "min_stake": min_stake},
        )
    return None


def check_declared_size(content_length: int | None, limit: int = protocol.MAX_BODY_BYTES) -> Refusal | None:
    """413 for a body declared larger than the protocol allows; a chunked body is bounded while read."""
    if content_length is not None and content_length > limit:
        return too_large_body(content_length, limit)
    return None


def too_large_body(size: int | None, limit: int) -> Refusal:
    said = f"a body of {size} bytes is" if size is not None else "the body is"
    return Refusal(
        413, "too_large", f"{said} over the {limit}-byte limit on requests", {"max_body_bytes": limit}
    )


def check_max_new_tokens(requested: int, cap: int) -> Refusal | None:
    """400 for a query asking for more new tokens than this miner generates. Refused rather than clamped:
    a clamped answer would be scored as if it were whole (see docs/miner.md)."""
    if requested > cap:
        return Refusal(
            400,
            "bad_request",
            f"max_new_tokens: {requested} is over this miner's cap of {cap}",
            {"field": "max_new_tokens", "max_new_tokens": cap},
        )
    return None


def check_prompt_fits(prompt_tokens: int, max_new_tokens: int, info: EngineInfo | None) -> Refusal | None:
    """413 for a prompt the engine cannot take. `prompt_tokens` is counted with the engine's tokenizer
    without the special tokens and chat template the engine adds: a lower bound, so a refusal is certain."""
    if info is None or info.fits(prompt_tokens, max_new_tokens):
        return None
    return Refusal(
        413,
        "too_large",
        f"the prompt has at least {prompt_tokens} tokens; with max_new_tokens {max_new_tokens} it does not "
        f"fit the engine (at most {info.max_input_tokens} input and {info.max_total_tokens} total tokens)",
        {
            "prompt_tokens": prompt_tokens,
            "max_new_tokens": max_new_tokens,
            "max_input_tokens": info.max_input_tokens,
            "max_total_tokens": info.max_total_tokens,
        },
    )


def deadline_budget(deadline_unix: float, now_unix: float, engine_timeout_s: float) -> float | None:
    """Seconds the engine may take: until the deadline, at most the engine timeout; None once it passed."""
    remaining = deadline_unix - now_unix
    if remaining <= 0:
        return None
    return min(remaining, engine_timeout_s)


def classify_engine_error(error: EngineError, info: EngineInfo | None) -> Refusal:
    """The refusal an engine failure stands for."""
    message, status = str(error), error.status
    limits = {
        "max_input_tokens": info.max_input_tokens if info else None,
        "max_total_tokens": info.max_total_tokens if info else None,
    }
    if error.failure == "timeout":
        return Refusal(504, "timeout", message)
    if error.failure == "unreachable":
        return Refusal(503, "engine_down", message)
    # TGI answers 422 "Input validation error: `inputs` must have less than N tokens. Given: M"; vLLM
    # answers 400 "This model's maximum context length is N tokens...": only the words tell a prompt that
    # is too long from other invalid requests.
    if error.failure == "too_long" or (status in (400, 422) and "token" in message.lower()):
        return Refusal(413, "too_large", message, {"engine_message": message, **limits})
    if status == 413:  # the engine's byte limit on bodies (TGI --payload-limit, 2 MB by default)
        return Refusal(
            413, "too_large", f"{message} (the engine's payload limit is below this prompt's size)", limits
        )
    if status in (429, 503):  # the engine is overloaded or still loading: worth retrying later
        return Refusal(503, "engine_busy", message)
    return Refusal(502, "engine_error", message)


def engine_label(name: str) -> str:
    """The engine's kind ("tgi", "openai", "local") from its name: the name also carries the engine's
    internal URL or path, which is none of a validator's business."""
    return name.split(" ", 1)[0].split(":", 1)[0]


def model_problem(info: EngineInfo, model_name: str | None) -> str | None:
    """Why the engine's model is not the one configured, if it is not. A TGI engine serves one model
    whatever the request says, so a mismatch means the miner would answer with a model it does not claim."""
    if model_name is None or info.model_id is None or info.model_id == model_name:
        return None
    return f"the engine serves {info.model_id!r}, not --miner.model_name {model_name!r}"


def endpoint_problem(
    snapshot: MetagraphSnapshot | None, hotkey: str, endpoint: tuple[str, int]
) -> str | None:
    """Why the chain does not point validators at this miner, if it does not."""
    if snapshot is None:
        return "the metagraph has not been read yet"
    neuron = snapshot.by_hotkey(hotkey)
    if neuron is None:
        return f"hotkey {hotkey} is not registered on netuid {snapshot.netuid}"
    if neuron.endpoint != endpoint:
        return f"the chain shows endpoint {neuron.endpoint} for uid {neuron.uid}, not {endpoint}"
    return None


# ---------------------------------------------------------------------------------------------------------
# State the handlers share


class Metrics:
    """This server's Prometheus series, in a registry of its own so several miners share one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "quasar_miner_requests", "Queries by outcome", ["outcome"], registry=self.registry
        )
        self.in_flight = Gauge("quasar_miner_in_flight", "Queries being handled", registry=self.registry)
        self.latency = Histogram(
            "quasar_miner_request_duration_seconds",
            "Time from a query's arrival to its answer, by outcome",
            ["outcome"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "quasar_miner_prompt_tokens", "Prompt tokens, as the engine counted them", registry=self.registry
        )
        self.completion_tokens = Counter(
            "quasar_miner_completion_tokens", "Generated tokens", registry=self.registry
        )


class EngineProbe:
    """The engine's /info, asked at most once per `ttl_s` by readiness probes and queries together."""

    def __init__(self, engine: Engine, model_name: str | None, ttl_s: float) -> None:
        self._engine = engine
        self._model_name = model_name
        self._ttl_s = ttl_s
        self._lock = asyncio.Lock()
        self._checked_at = float("-inf")
        self._problem: str | None = "the engine has not been asked yet"
        self.info: EngineInfo | None = None  # the last good answer

    async def problem(self) -> str | None:
        """Why the engine cannot answer queries now, or None when it can."""
        async with self._lock:
            if time.monotonic() - self._checked_at >= self._ttl_s:
                self._problem = await self._ask()
                self._checked_at = time.monotonic()
            return self._problem

    def invalidate(self) -> None:
        """Ask again next time: a query just found the engine down."""
        self._checked_at = float("-inf")

    async def _ask(self) -> str | None:
        try:
            info = await asyncio.wait_for(self._engine.info(), ENGINE_PROBE_TIMEOUT_S)
        except EngineError as error:
            return str(error)
        except TimeoutError:
            return f"{self._engine.name}: no /info answer within {ENGINE_PROBE_TIMEOUT_S:g} s"
        self.info = info
        return model_problem(info, self._model_name)


class ChainSync:
    """The last metagraph snapshot, and this hotkey's endpoint kept announced on chain."""

    def __init__(self, chain: Chain, endpoint: tuple[str, int]) -> None:
        self._chain = chain
        self.endpoint = endpoint
        self.snapshot: MetagraphSnapshot | None = None

    async def sync(self) -> None:
        """Read the metagraph; announce the endpoint if the chain shows another one for this hotkey. A chain
        error keeps the previous snapshot: validators keep being served while the chain is unreachable."""
        try:
            self.snapshot = await self._chain.snapshot()
        except ChainError as error:
            log.warning("metagraph sync failed, keeping the previous snapshot: %s", error)
            return
        neuron = self.snapshot.by_hotkey(self._chain.hotkey)
        if neuron is not None and neuron.endpoint != self.endpoint:
            log.info("announcing endpoint %s:%d for uid %d", *self.endpoint, neuron.uid)
            try:
                await self._chain.serve(*self.endpoint)
                self.snapshot = await self._chain.snapshot()
            except ChainError as error:
                log.warning("announcing the endpoint failed; trying again at the next sync: %s", error)
        problem = endpoint_problem(self.snapshot, self._chain.hotkey, self.endpoint)
        if problem is not None:
            log.warning("validators cannot reach this miner: %s", problem)

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sync()
            except Exception:  # a bug in one sync must not end the syncing for the life of the process
                log.exception("metagraph sync crashed")


# ---------------------------------------------------------------------------------------------------------
# HTTP


@dataclass(frozen=True)
class _Answer:
    body: bytes
    prompt_tokens: int | None
    completion_tokens: int | None


class _Miner:
    def __init__(
        self,
        config: MinerConfig,
        chain: Chain,
        engine: Engine,
        endpoint: tuple[str, int],
        tokenizer: Tokenizer | None,
    ) -> None:
        self._config = config
        self._engine = engine
        self._tokenizer = tokenizer
        self._verifier = RequestVerifier(chain.hotkey)
        self.metrics = Metrics()
        self.probe = EngineProbe(engine, config.model_name, config.engine_probe_ttl_s)
        self.chain = ChainSync(chain, endpoint)
        self._hotkey = chain.hotkey

    def app(self) -> web.Application:
        # aiohttp's own cap bounds a chunked body (no Content-Length) while it is read.
        app = web.Application(client_max_size=protocol.MAX_BODY_BYTES)
        app.router.add_post(protocol.QUERY_PATH, self.query, expect_handler=_defer_continue)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def readyz(self, request: web.Request) -> web.Response:
        problems = [
            problem
            for problem in (
                await self.probe.problem(),
                endpoint_problem(self.chain.snapshot, self._hotkey, self.chain.endpoint),
            )
            if problem is not None
        ]
        if problems:
            return web.json_response({"ready": False, "problems": problems}, status=503)
        return web.json_response({"ready": True})

    async def query(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        metrics = self.metrics
        metrics.in_flight.inc()
        outcome = "error"  # what an unexpected exception counts as; aiohttp answers it with a 500
        try:
            result = await self._answer(request, started)
            if isinstance(result, Refusal):
                outcome = result.outcome
                log.debug("refused %s: %d %r", request.remote, result.status, result.reason)
                return _refusal_response(result, body_read=request.content.is_eof())
            outcome = "ok"
            if result.prompt_tokens is not None:
                metrics.prompt_tokens.inc(result.prompt_tokens)
            if result.completion_tokens is not None:
                metrics.completion_tokens.inc(result.completion_tokens)
            return web.Response(body=result.body, content_type="application/json")
        except asyncio.CancelledError:
            outcome = "cancelled"  # the validator hung up; aiohttp cancels the handler and the engine call
            raise
        finally:
            metrics.in_flight.dec()
            metrics.requests.labels(outcome).inc()
            metrics.latency.labels(outcome).observe(time.perf_counter() - started)

    def _authorise(self, hotkey: str) -> Refusal | None:
        snapshot = self.chain.snapshot
        if snapshot is None:
            return Refusal(503, "not_ready", "the metagraph has not been read yet: callers cannot be checked")
        return check_caller(hotkey, snapshot, self._config.min_stake)

    async def _answer(self, request: web.Request, started: float) -> Refusal | _Answer:
        """The query's checks in order, cheapest first; the body is read only once the headers pass."""
        # The only reader of the identity headers: what is checked now is what the signature must prove.
        try:
            claim = read_claim(request.headers)
        except AuthError as error:
            return Refusal(401, "unauthorized", str(error), {"code": error.code})
        refusal = self._authorise(claim.hotkey) or check_declared_size(request.content_length)
        if refusal is not None:
            return refusal
        if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return too_large_body(None, protocol.MAX_BODY_BYTES)
        except HttpProcessingError as error:  # a broken chunked encoding, found while reading
            return Refusal(400, "bad_request", f"body: {error.message}", {"field": "body"})
        # Hashing and decompressing megabytes release the GIL: threads keep the event loop answering.
        try:
            caller = await asyncio.to_thread(self._verifier.verify_claim, claim, body)
        except AuthError as error:
            return Refusal(401, "unauthorized", str(error), {"code": error.code})
        # Authorised is what verified, against the newest metagraph (it may have changed during the read).
        refusal = self._authorise(caller)
        if refusal is not None:
            return refusal
        try:
            query = await asyncio.to_thread(protocol.decode_request, body)
        except protocol.ProtocolError as error:
            return Refusal(400, "bad_request", str(error), {"field": error.field})
        refusal = check_max_new_tokens(query.max_new_tokens, self._config.max_new_tokens)
        if refusal is not None:
            return refusal
        budget = deadline_budget(query.deadline_unix, time.time(), self._config.engine_timeout_s)
        if budget is None:
            late = time.time() - query.deadline_unix
            return Refusal(
                408, "expired", f"the request's deadline had passed {late:.3f} s before it was read"
            )
        try:
            # Every engine call, the /info probe included, ends by the deadline.
            async with asyncio.timeout(budget):
                problem = await self.probe.problem()
                if problem is not None:
                    return Refusal(503, "engine_down", problem)
                refusal = await self._check_fits(query.prompt, query.max_new_tokens)
                if refusal is not None:
                    return refusal
                generation = await self._engine.generate(query.prompt, query.max_new_tokens)
        except TimeoutError:
            bound = (
                "--engine.timeout" if budget >= self._config.engine_timeout_s else "the request's deadline"
            )
            return Refusal(504, "timeout", f"no answer from the engine within {budget:.3f} s ({bound})")
        except EngineError as error:
            refusal = classify_engine_error(error, self.probe.info)
            if refusal.outcome == "engine_down":
                self.probe.invalidate()
            log.warning("engine refused task %r: %s", query.task_id, error)
            return refusal
        info = self.probe.info
        response = protocol.QueryResponse(
            version=protocol.PROTOCOL_VERSION,
            task_id=query.task_id,
            text=generation.text,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            engine=engine_label(self._engine.name),
            model=info.model_id if info else None,
            engine_latency_s=generation.latency_s,
            total_latency_s=time.perf_counter() - started,
        )
        log.debug("answered task %r in %.3f s", query.task_id, response.total_latency_s)
        return _Answer(
            protocol.encode_response(response), generation.prompt_tokens, generation.completion_tokens
        )

    async def _check_fits(self, prompt: str, max_new_tokens: int) -> Refusal | None:
        """The prompt against the engine's limits, where this miner has the engine's tokenizer."""
        if self._tokenizer is None:
            return None
        # Counting a 2M-token prompt takes seconds of CPU: off the event loop.
        prompt_tokens = await asyncio.to_thread(self._tokenizer.count, prompt)
        return check_prompt_fits(prompt_tokens, max_new_tokens, self.probe.info)


async def _defer_continue(request: web.Request) -> None:
    """`Expect: 100-continue` (curl sends it with large bodies) is answered by the query handler once the
    header checks pass, so a refused client never sends its body; aiohttp would answer it before them."""


def _refusal_response(refusal: Refusal, body_read: bool) -> web.Response:
    response = web.Response(
        status=refusal.status, text=json.dumps(refusal.body()), content_type="application/json"
    )
    if not body_read:
        # Refused before the body was read: closing beats draining megabytes nobody will use.
        response.force_close()
    return response


@dataclass
class RunningMiner:
    """A miner serving validators on `port` (`url`) and its Prometheus page at `metrics_url`, on a listener
    of its own (`url + "/metrics"` is a 404); `stop()` ends both servers and the metagraph sync. The engine
    stays open: it belongs to whoever made it."""

    url: str
    port: int
    metrics_url: str
    _site: GuardedSite
    _metrics_site: GuardedSite
    _sync_task: "asyncio.Task[None]"

    @property
    def guard_stats(self) -> GuardStats:
        """What the HTTP guard saw: bytes read, connections refused, timeouts, malformed messages."""
        return self._site.stats

    async def stop(self) -> None:
        self._sync_task.cancel()
        await self._site.stop()
        await self._metrics_site.stop()


async def start_miner(
    config: MinerConfig,
    chain: Chain,
    engine: Engine,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    metrics_host: str | None = None,
    metrics_port: int = 0,
) -> RunningMiner:
    """Serve, then read the metagraph, announce the endpoint and ask the engine for its limits. The
    endpoint announced is `config.external_ip`/`external_port`, each defaulting to the address actually
    bound (port 0 picks a free one). Serving comes first: the endpoint answers by the time it is announced,
    and liveness probes pass while a slow chain or engine is waited for (readiness tells them apart).
    The metrics listen on `metrics_host` (default `host`) and `metrics_port` (0: any free port); a port
    taken there is an InputError naming --metrics.port."""
    tokenizer = None
    if config.engine_tokenizer is not None:  # a bad name fails here, before anything listens
        tokenizer = await asyncio.to_thread(load_tokenizer, config.engine_tokenizer)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port: int = sock.getsockname()[1]
    endpoint = (config.external_ip or host, config.external_port or bound_port)
    miner = _Miner(config, chain, engine, endpoint, tokenizer)
    # Cancel a handler when its validator hangs up: its engine request is closed, not left running.
    # No auto_decompress: aiohttp would gunzip the body unbounded, before the signature (which covers the
    # compressed bytes) is checked; protocol.decode_request decompresses it, bounded, after the checks.
    try:
        metrics_site = await serve_metrics(
            miner.metrics.registry, metrics_host or host, metrics_port, config.guard
        )
    except BaseException:
        sock.close()
        raise
    try:
        site = await serve_guarded(
            miner.app(), sock, config.guard, handler_cancellation=True, auto_decompress=False
        )
    except BaseException:
        await metrics_site.stop()
        raise
    log.info("Prometheus metrics at %s", page_url(metrics_site))
    log.info(
        "miner for %s serving on %s:%d; its endpoint for validators: %s:%d",
        chain.hotkey,
        host,
        bound_port,
        *endpoint,
    )
    try:
        await miner.chain.sync()
        await _log_engine(engine, miner.probe)
    except BaseException:
        await site.stop()
        await metrics_site.stop()
        raise
    sync_task = asyncio.create_task(miner.chain.run(config.sync_interval_s), name="metagraph-sync")
    return RunningMiner(
        f"http://{host}:{bound_port}",
        bound_port,
        page_url(metrics_site),
        site,
        metrics_site,
        sync_task,
    )


async def _log_engine(engine: Engine, probe: EngineProbe) -> None:
    problem = await probe.problem()
    if problem is not None:
        log.warning("the engine cannot answer yet (queries get 503 until it can): %s", problem)
    elif probe.info is not None:
        log.info(
            "engine %s serves %s: at most %s input and %s total tokens",
            engine.name,
            probe.info.model_id,
            probe.info.max_input_tokens,
            probe.info.max_total_tokens,
        )


# ---------------------------------------------------------------------------------------------------------
# The process


async def _serve_until_signalled(config: MinerConfig) -> int:
    from neurons.chain import BittensorChain, load_wallet

    wallet = load_wallet(config.wallet_name, config.wallet_hotkey, config.wallet_path)
    chain = BittensorChain(wallet, config.network, config.chain_endpoint, config.netuid)
    # The model name selects the model only on OpenAI-compatible servers; TGI serves one, checked by name.
    model = config.model_name if config.engine_kind != "tgi" else None
    engine = make_engine(
        config.engine_kind, config.engine_url, model, config.engine_timeout_s, config.engine_api
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        running = await start_miner(
            config,
            chain,
            engine,
            host="0.0.0.0",
            port=config.axon_port,
            metrics_host=config.metrics_host,
            metrics_port=config.metrics_port,
        )
        try:
            await stop.wait()
            log.info("stopping")
        finally:
            await running.stop()
    finally:
        await engine.aclose()
        await chain.close()
    return 0


def main(argv: Sequence[str], prog: str = "quasar miner") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = config_from_args(args)
        if config.external_ip is None:
            raise InputError("--axon.external_ip", "required: the address validators reach this miner at")
        return asyncio.run(_serve_until_signalled(config))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ChainError as error:
        print(f"error: chain: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the port is taken, or the address is not this machine's
        print(f"error: cannot listen on port {args.axon_port}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], "neurons/miner.py"))
