"""`quasar engine serve`: a development inference server that speaks text-generation-inference's API.

Miners talk to their engine through TGI's HTTP API. This server answers that API from a transformers model
on CPU (CUDA when available), so mock mode and tests go through exactly the production path: the same
client, the same JSON shapes, the same errors. The built-in tiny model (evaluation.local_model) is the
default; `--model` also takes a local folder or a Hub id in the HF cache.

Endpoints, in TGI's shapes: `POST /generate`, `POST /` (a one-element list, or a stream when the body says
`"stream": true`), `POST /generate_stream` (server-sent events, one token per event), `GET /info`,
`GET /health` and `GET /metrics` (Prometheus, TGI's metric names).

Like TGI, it validates a request's token counts before queueing it (422 with TGI's message and numbers),
refuses bodies over the payload limit (413) and starts listening only once the model is loaded. Unlike
TGI, it runs one request at a time, in arrival order, and decodes greedily only: sampling, stop sequences
and the other options that would change the answer are refused with a 422 rather than ignored.
"""

import argparse
import asyncio
import contextlib
import json
import logging
import math
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric, UnknownMetricFamily
from prometheus_client.registry import Collector

from evaluation.engines import EngineError, LoadedModel, load_local_model
from evaluation.http_guard import GuardedSite, GuardLimits, serve_guarded
from evaluation.local_model import LOCAL_MAX_TOTAL_TOKENS, ensure_local_model

log = logging.getLogger("quasar.engine")

TINY_MODEL = "tiny"
DEFAULT_PAYLOAD_LIMIT = 64 * 1024 * 1024  # bytes: a 2M-token prompt is ~8 MB of text, TGI's 2 MB is too small
# TGI's cap on max_new_tokens when a request gives none (it then fills up to max_total_tokens otherwise).
DEFAULT_GENERATION_LENGTH = 1024
VERSION = "quasar-local-engine-1"
MAX_CONCURRENT_REQUESTS = 128  # TGI's default: more requests waiting or running get a 429
# The guard's defaults (timeouts, ...), but room for every request TGI's limit lets in from one peer (mock
# mode's miners all connect from 127.0.0.1), plus /health and /metrics, so the 429 stays reachable.
GUARD_LIMITS = GuardLimits(max_connections_per_peer=2 * MAX_CONCURRENT_REQUESTS)
PAYLOAD_TOO_LARGE = "Failed to buffer the request body: length limit exceeded"  # TGI's (axum's) text
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Parameters that would make TGI answer differently from greedy decoding of the whole prompt: refused,
# since silently ignoring them would make this server disagree with production.
_NEUTRAL_PARAMETERS: dict[str, tuple[Any, ...]] = {
    "do_sample": (None, False),
    "temperature": (None, 1.0),
    "top_k": (None,),
    "top_p": (None,),
    "typical_p": (None,),
    "repetition_penalty": (None, 1.0),
    "frequency_penalty": (None, 0.0),
    "watermark": (None, False),
    "best_of": (None, 1),
    "stop": (None, []),
    "grammar": (None,),
    "adapter_id": (None,),
    "top_n_tokens": (None, 0),
    "decoder_input_details": (None, False),
}


MAX_JSON_DEPTH = 32  # objects and arrays within each other: no request of either API nests more than 4
_INT64_BOUND = 2**63  # no count or setting this server takes is larger; beyond it ints are only a DoS lever
_SHOWN_CHARS = 80  # of a client's value echoed in an error message


class BodyError(Exception):
    """A body that is not a JSON object this server can read; `status` is the HTTP status to answer
    (400 for what TGI's JSON parser refuses, 422 for a value out of range)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, checked so nothing later can fail on it: every string (keys too) is valid
    Unicode (JSON's escapes can spell a lone surrogate, which no tokenizer or encoder takes), containers
    nest at most MAX_JSON_DEPTH deep, numbers are finite and integers fit in 64 bits. Raises BodyError naming
    the field otherwise."""
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:  # the decoder recurses per level: thousands of "[" exhaust the stack
        raise BodyError(400, f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as error:
        raise BodyError(400, f"Failed to parse the request body as JSON: {error}") from None
    _check_values(body)
    if not isinstance(body, dict):
        raise BodyError(422, "the request body must be a JSON object")
    return body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_values(body: Any) -> None:
    """Walks the parsed body without recursion (so any depth the decoder took is safe to walk)."""
    pending: list[tuple[str, Any, int]] = [("", body, 0)]
    while pending:
        path, value, depth = pending.pop()
        if isinstance(value, str):
            _check_text(f"`{path or 'body'}`", value)
        elif isinstance(value, int) and not isinstance(value, bool):
            if not -_INT64_BOUND <= value < _INT64_BOUND:
                raise BodyError(422, f"`{path or 'body'}` is out of range: integers must fit in 64 bits")
        elif isinstance(value, float) and not math.isfinite(value):
            raise BodyError(422, f"`{path or 'body'}` is out of range: {value} is not a finite number")
        elif isinstance(value, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise BodyError(400, f"`{path or 'body'}` nests deeper than {MAX_JSON_DEPTH} levels")
            for key, item in value.items() if isinstance(value, dict) else enumerate(value):
                child = f"{path}[{key}]" if isinstance(key, int) else _child_path(path, key)
                pending.append((child, item, depth + 1))


def _child_path(path: str, key: str) -> str:
    _check_text(f"a key in `{path or 'body'}`", key)
    name = key if len(key) <= _SHOWN_CHARS else key[:_SHOWN_CHARS] + "..."
    return f"{path}.{name}" if path else name


def _check_text(where: str, text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        surrogate = f"\\u{ord(text[error.start]):04x}"
        raise BodyError(
            400, f"{where} is not valid Unicode: a lone surrogate ({surrogate}) at character {error.start}"
        ) from None


def shown(value: Any) -> str:
    """A client's value for an error message: its repr, cut short (a value may be megabytes)."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


class OverloadedError(Exception):
    """More requests in flight than MAX_CONCURRENT_REQUESTS: TGI answers 429."""


class InvalidRequestError(Exception):
    """A request TGI would refuse with a 422; the message is TGI's, after "Input validation error: "."""


@dataclass(frozen=True)
class Token:
    id: int
    text: str
    logprob: float
    special: bool

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "logprob": self.logprob, "special": self.special}


@dataclass(frozen=True)
class Job:
    """A validated generation request."""

    inputs: str
    ids: list[int]
    max_new_tokens: int
    details: bool
    return_full_text: bool


@dataclass(frozen=True)
class Outcome:
    tokens: list[Token]
    text: str  # the generated text without special tokens (and with the prompt if return_full_text)
    finish_reason: str  # TGI's: "length" or "eos_token"
    queue_s: float
    inference_s: float


class _TokenRecorder:
    """A transformers streamer and logits processor in one: `model.generate` calls the processor with each
    step's scores, then the streamer with the token chosen from them, so each token gets its log
    probability; tokens are decoded incrementally (a byte-level token may end mid-character) and handed
    to `on_token` as they come."""

    def __init__(self, tokenizer: Any, special_ids: set[int], on_token: Callable[[Token], None]) -> None:
        self._tokenizer = tokenizer
        self._special_ids = special_ids
        self._on_token = on_token
        self._prompt_seen = False
        self._logprobs: Any = None  # the last step's log-softmax row
        self.ids: list[int] = []
        self.tokens: list[Token] = []
        # TGI's incremental detokenisation: text is released once the bytes decode to whole characters.
        self._prefix_offset = 0
        self._read_offset = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:  # LogitsProcessor
        import torch

        self._logprobs = torch.log_softmax(scores[0].float(), dim=-1)
        return scores

    def put(self, value: Any) -> None:  # BaseStreamer
        if not self._prompt_seen:  # generate() hands the prompt over first
            self._prompt_seen = True
            return
        for token_id in value.reshape(-1).tolist():
            self.ids.append(token_id)
            logprob = float(self._logprobs[token_id])
            token = Token(token_id, self._next_text(), logprob, token_id in self._special_ids)
            self.tokens.append(token)
            self._on_token(token)

    def end(self) -> None:  # BaseStreamer
        """Nothing to flush: put() hands every token over at once."""

    def _next_text(self) -> str:
        decode = self._tokenizer.decode
        prefix: str = decode(self.ids[self._prefix_offset : self._read_offset], skip_special_tokens=False)
        text: str = decode(self.ids[self._prefix_offset :], skip_special_tokens=False)
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
            return text[len(prefix) :]
        return ""


class _Cancelled:
    """Stopping criterion: ends decoding once the request is abandoned (client gone, server stopping)."""

    def __init__(self, cancel: threading.Event) -> None:
        self._cancel = cancel

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full(
            (input_ids.shape[0],), self._cancel.is_set(), dtype=torch.bool, device=input_ids.device
        )


class Generator:
    """The model side, called from worker threads: tokenising and greedy generation."""

    def __init__(self, loaded: LoadedModel) -> None:
        self._tokenizer = loaded.tokenizer
        self._model = loaded.model
        self._special_ids = set(loaded.tokenizer.all_special_ids)
        self._eos_id = loaded.tokenizer.eos_token_id
        # Chat models often end on one of several tokens; generate() stops on any of them.
        configured = loaded.model.generation_config.eos_token_id
        listed = configured if isinstance(configured, list) else [configured]
        self._eos_ids = {i for i in [self._eos_id, *listed] if i is not None}
        self.compute_type = "gpu" if loaded.model.device.type == "cuda" else "cpu"  # TGI's x-compute-type

    def encode(self, text: str) -> list[int]:
        # Special tokens (a BOS) as TGI adds them; the Rust encoder has no max-length warning.
        ids: list[int] = self._tokenizer.backend_tokenizer.encode(text, add_special_tokens=True).ids
        return ids

    def generate(
        self, job: Job, on_token: Callable[[Token], None], cancel: threading.Event
    ) -> tuple[list[Token], str, str]:
        """Tokens, generated text and finish reason."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        recorder = _TokenRecorder(self._tokenizer, self._special_ids, on_token)
        input_ids = torch.tensor([job.ids], dtype=torch.long, device=self._model.device)
        with torch.inference_mode():
            self._model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=job.max_new_tokens,
                do_sample=False,
                pad_token_id=self._tokenizer.pad_token_id or self._eos_id,
                logits_processor=LogitsProcessorList([recorder]),
                stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]),
                streamer=recorder,
            )
        text = self._tokenizer.decode(recorder.ids, skip_special_tokens=True)
        finish_reason = "eos_token" if recorder.ids and recorder.ids[-1] in self._eos_ids else "length"
        return recorder.tokens, text, finish_reason


class _RequestCounts(Collector):
    """TGI's request counters under their exact names (tgi_request_count, ...): prometheus_client's Counter
    would export them as `..._total`, which dashboards written for TGI do not query."""

    def __init__(self) -> None:
        self.requests = 0
        self.successes = 0
        self.failures: Counter[str] = Counter()  # by TGI's `err` label: validation, generation, ...

    def collect(self) -> Iterable[Metric]:
        yield UnknownMetricFamily("tgi_request_count", "Requests received", value=self.requests)
        yield UnknownMetricFamily("tgi_request_success", "Requests answered", value=self.successes)
        failures = UnknownMetricFamily("tgi_request_failure", "Requests failed", labels=["err"])
        for err, count in sorted(self.failures.items()):
            failures.add_metric([err], count)
        yield failures


class _Metrics:
    """TGI's Prometheus metrics on a registry of this server's own (several servers run in one process)."""

    def __init__(self, max_input_tokens: int, max_total_tokens: int) -> None:
        self.registry = CollectorRegistry()
        self.counts = _RequestCounts()
        self.registry.register(self.counts)
        seconds = [0.01 * 2**k for k in range(17)]  # 10 ms to ~11 min: long prefills are minutes
        self.queue_size = Gauge("tgi_queue_size", "Requests waiting", registry=self.registry)
        self.batch_size = Gauge("tgi_batch_current_size", "Requests running", registry=self.registry)
        self.batch_max_tokens = Gauge(
            "tgi_batch_current_max_tokens", "Tokens the running batch may reach", registry=self.registry
        )
        self.duration = self._histogram("tgi_request_duration", "Request time (s)", seconds)
        self.queue_duration = self._histogram("tgi_request_queue_duration", "Time queued (s)", seconds)
        self.inference_duration = self._histogram(
            "tgi_request_inference_duration", "Generation time (s)", seconds
        )
        self.input_length = self._histogram(
            "tgi_request_input_length", "Prompt tokens", _linear(max_input_tokens, 20)
        )
        self.max_new_tokens = self._histogram(
            "tgi_request_max_new_tokens", "Requested new tokens", _linear(max_total_tokens, 20)
        )
        self.generated_tokens = self._histogram(
            "tgi_request_generated_tokens", "Generated tokens", [2.0**k for k in range(13)]
        )

    def _histogram(self, name: str, documentation: str, buckets: list[float]) -> Histogram:
        return Histogram(name, documentation, buckets=buckets, registry=self.registry)


def _linear(top: int, count: int) -> list[float]:
    return [top * (i + 1) / count for i in range(count)]


class EngineServer:
    """The HTTP side: parsing, validation, the queue, and TGI's response shapes."""

    def __init__(
        self,
        generator: Generator,
        model_id: str,
        max_input_tokens: int,
        max_total_tokens: int,
        payload_limit: int,
    ) -> None:
        self._generator = generator
        self.model_id = model_id
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        self.payload_limit = payload_limit
        self.metrics = _Metrics(max_input_tokens, max_total_tokens)
        self._turn = asyncio.Lock()  # one generation at a time; asyncio.Lock wakes waiters in order
        self._waiting = 0

    def app(self) -> web.Application:
        # The payload limit is enforced in _read_body with TGI's message; this only bounds memory.
        app = web.Application(client_max_size=self.payload_limit)
        app.router.add_post("/", self._compat)
        app.router.add_post("/generate", self._generate)
        app.router.add_post("/generate_stream", self._generate_stream)
        app.router.add_get("/info", self._info)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        return app

    # --- handlers

    async def _compat(self, request: web.Request) -> web.StreamResponse:
        """TGI's `/`: a stream when the body asks for one, else `/generate`'s answer in a list."""
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        if body.get("stream") is True:
            return await self._stream(request, body)
        return await self._answer(body, as_list=True)

    async def _generate(self, request: web.Request) -> web.Response:
        body = await self._read_body(request)
        return body if isinstance(body, web.Response) else await self._answer(body, as_list=False)

    async def _generate_stream(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_body(request)
        return body if isinstance(body, web.Response) else await self._stream(request, body)

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "model_id": self.model_id,
                "model_sha": None,
                "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": MAX_CONCURRENT_REQUESTS,
                "max_best_of": 1,
                "max_stop_sequences": 0,
                "max_input_tokens": self.max_input_tokens,
                "max_total_tokens": self.max_total_tokens,
                "validation_workers": 1,
                "max_client_batch_size": 1,
                "router": "quasar-local-engine",
                "version": VERSION,
                "sha": None,
                "docker_label": None,
            }
        )

    async def _health(self, request: web.Request) -> web.Response:
        # The server listens only once the model is loaded, as TGI does: being here means healthy.
        return web.Response(status=200)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), content_type="text/plain")

    # --- requests

    async def _read_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        """The JSON body, or the error response TGI would send instead."""
        self.metrics.counts.requests += 1
        if (request.content_length or 0) > self.payload_limit:
            return self._fail(web.Response(status=413, text=PAYLOAD_TOO_LARGE), "payload")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:  # a chunked body that grew past the limit
            return self._fail(web.Response(status=413, text=PAYLOAD_TOO_LARGE), "payload")
        try:
            return parse_json_object(raw)
        except BodyError as error:
            return self._fail(_error_response(error.status, str(error)))

    def _fail(self, response: web.Response, err: str = "validation") -> web.Response:
        self.metrics.counts.failures[err] += 1
        return response

    async def _validate(self, body: dict[str, Any]) -> Job:
        """TGI's checks, in its order; raises InvalidRequestError with its messages."""
        inputs, parameters = body.get("inputs"), body.get("parameters") or {}
        if not isinstance(inputs, str):
            raise InvalidRequestError("`inputs` must be a string")
        if not isinstance(parameters, dict):
            raise InvalidRequestError("`parameters` must be an object")
        _refuse_non_greedy(parameters)
        max_new_tokens = _optional_int(parameters, "max_new_tokens")
        truncate = _optional_int(parameters, "truncate")
        if max_new_tokens is not None and max_new_tokens <= 0:
            raise InvalidRequestError("`max_new_tokens` must be strictly positive")
        if not inputs:
            raise InvalidRequestError("`inputs` cannot be empty")
        if truncate is not None and not 0 < truncate <= self.max_input_tokens:
            raise InvalidRequestError(
                "`truncate` must be strictly positive and less than "
                f"{self.max_input_tokens}. Given: {truncate}"
            )
        # A long prompt takes a while to tokenise: off the event loop.
        ids = await asyncio.to_thread(self._generator.encode, inputs)
        if truncate is not None:
            ids = ids[-truncate:]  # TGI keeps the end of the prompt
        return self._check_lengths(inputs, ids, max_new_tokens, parameters)

    def _check_lengths(
        self, inputs: str, ids: list[int], max_new_tokens: int | None, parameters: dict[str, Any]
    ) -> Job:
        if max_new_tokens is None:
            max_new_tokens = min(max(self.max_total_tokens - len(ids), 0), DEFAULT_GENERATION_LENGTH)
        if len(ids) + max_new_tokens > self.max_total_tokens:
            raise InvalidRequestError(
                f"`inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. "
                f"Given: {len(ids)} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
            )
        if len(ids) > self.max_input_tokens:
            raise InvalidRequestError(
                f"`inputs` must have less than {self.max_input_tokens} tokens. Given: {len(ids)}"
            )
        self.metrics.input_length.observe(len(ids))
        self.metrics.max_new_tokens.observe(max_new_tokens)
        return Job(
            inputs,
            ids,
            max_new_tokens,
            details=parameters.get("details") is True,
            return_full_text=parameters.get("return_full_text") is True,
        )

    async def _answer(self, body: dict[str, Any], as_list: bool) -> web.Response:
        start = time.perf_counter()
        try:
            job = await self._validate(body)
        except InvalidRequestError as failure:
            return self._fail(_error_response(422, f"Input validation error: {failure}", "validation"))
        try:
            outcome = await self._run(job, on_token=None)
        except OverloadedError as error:
            return self._fail(_error_response(429, str(error), "overloaded"), "overloaded")
        except Exception as error:  # a model failure (out of memory, ...): TGI answers 424 and serves on
            return self._fail(_generation_error(error), "generation")
        total_s = self._succeeded(outcome, start)
        result: dict[str, Any] = {"generated_text": outcome.text}
        if job.details:
            result["details"] = {
                "finish_reason": outcome.finish_reason,
                "generated_tokens": len(outcome.tokens),
                "seed": None,
                "prefill": [],
                "tokens": [token.as_json() for token in outcome.tokens],
                "top_tokens": None,
                "best_of_sequences": None,
            }
        headers = _timing_headers(job, outcome, total_s, self._generator.compute_type)
        return web.json_response([result] if as_list else result, headers=headers)

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """Server-sent events as TGI sends them: one per token, the last also carrying the text and details;
        a validation or generation error is an event too (the status is already 200 by then in TGI)."""
        start = time.perf_counter()
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        try:
            job = await self._validate(body)
        except InvalidRequestError as failure:
            self.metrics.counts.failures["validation"] += 1
            error = {"error": f"Input validation error: {failure}", "error_type": "validation"}
            await response.write(_event(error))
            return response
        # aclosing: a client that hangs up ends the generation now, not when the generator is collected.
        async with contextlib.aclosing(self._stream_events(job, start)) as events:
            async for event in events:
                await response.write(_event(event))
        return response

    async def _stream_events(self, job: Job, start: float) -> AsyncGenerator[dict[str, Any], None]:
        """The events of one streamed generation. Each token is sent once the next one exists, since the
        last token's event is the one that carries the full text."""
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue[Token | None] = asyncio.Queue()

        def on_token(token: Token) -> None:  # called from the generating thread
            loop.call_soon_threadsafe(tokens.put_nowait, token)

        work = asyncio.ensure_future(self._run(job, on_token))
        # Token callbacks are queued on the loop before the thread's completion, so None comes last.
        work.add_done_callback(lambda _: tokens.put_nowait(None))
        try:
            held: Token | None = None
            index = 0
            while (token := await tokens.get()) is not None:
                if held is not None:
                    index += 1
                    yield _stream_token(index, held)
                held = token
            try:
                outcome = work.result()
            except OverloadedError as error:
                self.metrics.counts.failures["overloaded"] += 1
                yield {"error": str(error), "error_type": "overloaded"}
                return
            except Exception as error:  # a model failure: reported in the stream, as TGI does
                self.metrics.counts.failures["generation"] += 1
                yield {"error": f"Request failed during generation: {error}", "error_type": "generation"}
                return
            self._succeeded(outcome, start)
            if held is not None:
                yield _stream_end(index + 1, held, job, outcome)
        finally:
            if not work.done():  # the client went away: stop the generation and free the model
                work.cancel()
                await asyncio.wait({work})

    async def _run(self, job: Job, on_token: Callable[[Token], None] | None) -> Outcome:
        """Wait for the model's turn, then generate in a worker thread (the event loop keeps serving
        /health and /metrics meanwhile)."""
        queued = time.perf_counter()
        if self._waiting + self._turn.locked() >= MAX_CONCURRENT_REQUESTS:
            raise OverloadedError("Model is overloaded")
        self._waiting += 1
        self.metrics.queue_size.set(self._waiting)
        try:
            await self._turn.acquire()
        finally:
            self._waiting -= 1
            self.metrics.queue_size.set(self._waiting)
        try:
            started = time.perf_counter()
            self.metrics.batch_size.set(1)
            self.metrics.batch_max_tokens.set(len(job.ids) + job.max_new_tokens)
            tokens, text, finish_reason = await self._in_thread(job, on_token or (lambda token: None))
        finally:
            self.metrics.batch_size.set(0)
            self.metrics.batch_max_tokens.set(0)
            self._turn.release()
        if job.return_full_text:
            text = job.inputs + text
        now = time.perf_counter()
        return Outcome(tokens, text, finish_reason, started - queued, now - started)

    async def _in_thread(self, job: Job, on_token: Callable[[Token], None]) -> tuple[list[Token], str, str]:
        cancel = threading.Event()
        work = asyncio.ensure_future(asyncio.to_thread(self._generator.generate, job, on_token, cancel))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # The caller gave up; the thread cannot be killed, so tell it to stop and keep the model's
            # turn until it has, or the next request would run alongside it.
            cancel.set()
            await asyncio.wait({work})
            raise

    def _succeeded(self, outcome: Outcome, start: float) -> float:
        total_s = time.perf_counter() - start
        metrics = self.metrics
        metrics.counts.successes += 1
        metrics.duration.observe(total_s)
        metrics.queue_duration.observe(outcome.queue_s)
        metrics.inference_duration.observe(outcome.inference_s)
        metrics.generated_tokens.observe(len(outcome.tokens))
        return total_s


def _refuse_non_greedy(parameters: dict[str, Any]) -> None:
    for name, neutral in _NEUTRAL_PARAMETERS.items():
        if parameters.get(name) not in neutral:
            raise InvalidRequestError(
                f"`{name}` = {shown(parameters[name])} is not supported: "
                "this development engine decodes greedily"
            )


def _optional_int(parameters: dict[str, Any], name: str) -> int | None:
    value = parameters.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"`{name}` must be an integer. Given: {shown(value)}")
    return value


def _error_response(status: int, message: str, error_type: str = "validation") -> web.Response:
    return web.json_response({"error": message, "error_type": error_type}, status=status)


def _generation_error(error: Exception) -> web.Response:
    return _error_response(424, f"Request failed during generation: {error}", "generation")


def _stream_token(index: int, token: Token) -> dict[str, Any]:
    return {
        "index": index,
        "token": token.as_json(),
        "top_tokens": None,
        "generated_text": None,
        "details": None,
    }


def _stream_end(index: int, token: Token, job: Job, outcome: Outcome) -> dict[str, Any]:
    """The last token's event: it also carries the whole text and, if asked for, the details."""
    event = _stream_token(index, token)
    event["generated_text"] = outcome.text
    if job.details:
        event["details"] = {
            "finish_reason": outcome.finish_reason,
            "generated_tokens": len(outcome.tokens),
            "seed": None,
            "input_length": len(job.ids),
        }
    return event


def _event(payload: dict[str, Any]) -> bytes:
    return b"data:" + json.dumps(payload).encode() + b"\n\n"


def _timing_headers(job: Job, outcome: Outcome, total_s: float, compute_type: str) -> dict[str, str]:
    """TGI's timing and count headers (milliseconds): x-prompt-tokens spares a client counting tokens."""
    per_token_s = outcome.inference_s / max(len(outcome.tokens), 1)
    return {
        "x-compute-type": compute_type,
        "x-total-time": str(round(total_s * 1000)),
        "x-queue-time": str(round(outcome.queue_s * 1000)),
        "x-inference-time": str(round(outcome.inference_s * 1000)),
        "x-time-per-token": str(round(per_token_s * 1000)),
        "x-prompt-tokens": str(len(job.ids)),
        "x-generated-tokens": str(len(outcome.tokens)),
    }


@dataclass
class RunningEngineServer:
    url: str
    server: EngineServer
    site: GuardedSite = field(repr=False)

    async def stop(self) -> None:
        """Stop listening; running generations are told to stop and given the shutdown timeout to end."""
        await self.site.stop()


def resolve_model(model: str | None) -> str:
    """A model folder or Hub id; None or "tiny" is the built-in tiny model (built on first use)."""
    return str(ensure_local_model()) if model in (None, TINY_MODEL) else str(model)


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
    server = EngineServer(Generator(loaded), model or TINY_MODEL, max_input, total, payload_limit)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family)
    # handler_cancellation: a client that hangs up cancels its handler, which stops its generation.
    site = await serve_guarded(
        server.app(),
        sock,
        GUARD_LIMITS,
        handle_signals=False,
        handler_cancellation=True,
        shutdown_timeout=shutdown_timeout_s,
    )
    return RunningEngineServer(f"http://{_url_host(site.host)}:{site.port}", server, site)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def main(argv: Sequence[str], prog: str) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="A local inference engine speaking TGI's API.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model over TGI's HTTP API until interrupted")
    serve.add_argument(
        "--model", default=TINY_MODEL, help="a model folder or Hub id (default: the tiny model)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--max-input-tokens", type=_positive, help="default: max total tokens - 1")
    serve.add_argument(
        "--max-total-tokens",
        type=_positive,
        help=f"default: the model's context ({LOCAL_MAX_TOTAL_TOKENS} for tiny)",
    )
    serve.add_argument("--payload-limit", type=_positive, default=DEFAULT_PAYLOAD_LIMIT, help="bytes")
    serve.add_argument(
        "--graceful-termination-timeout",
        type=float,
        default=90.0,
        help="seconds running requests get on exit",
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
