"""Text-generation-inference's HTTP API over the served model: what miners, mock mode and the tests use.

Endpoints, in TGI's shapes: `POST /generate`, `POST /` (a one-element list, or a stream when the body says
`"stream": true`), `POST /generate_stream` (server-sent events, one token per event), `GET /info`,
`GET /health` and `GET /metrics` (Prometheus, TGI's metric names).

Like TGI, it validates a request's token counts before queueing it (422 with TGI's message and numbers)
and refuses bodies over the payload limit (413). Unlike TGI, it decodes greedily only: sampling, stop
sequences and the other options that would change the answer are refused with a 422 rather than ignored.
"""

import contextlib
import json
import time
from collections.abc import AsyncGenerator
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest

from evaluation.dev_engine import model
from evaluation.dev_engine.model import Job, Outcome, OverloadedError, ServedModel, Token
from evaluation.dev_engine.wire import PAYLOAD_TOO_LARGE, SSE_HEADERS, BodyError, read_json_body, shown

# TGI's cap on max_new_tokens when a request gives none (it then fills up to max_total_tokens otherwise).
DEFAULT_GENERATION_LENGTH = 1024
VERSION = "quasar-local-engine-1"

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


class InvalidRequestError(Exception):
    """A request TGI would refuse with a 422; the message is TGI's, after "Input validation error: "."""


class TGIRoutes:
    """TGI's endpoints: parsing, validation and TGI's response shapes; the model's queue does the rest."""

    def __init__(self, served: ServedModel, payload_limit: int) -> None:
        self._model = served
        self._payload_limit = payload_limit

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/", self._compat)
        app.router.add_post("/generate", self._generate)
        app.router.add_post("/generate_stream", self._generate_stream)
        app.router.add_get("/info", self._info)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)

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
                "model_id": self._model.model_id,
                "model_sha": None,
                "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": model.MAX_CONCURRENT_REQUESTS,
                "max_best_of": 1,
                "max_stop_sequences": 0,
                "max_input_tokens": self._model.max_input_tokens,
                "max_total_tokens": self._model.max_total_tokens,
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
        return web.Response(body=generate_latest(self._model.metrics.registry), content_type="text/plain")

    # --- requests

    async def _read_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        """The JSON body, or the error response TGI would send instead."""
        self._model.metrics.counts.requests += 1
        try:
            return await read_json_body(request, self._payload_limit)
        except BodyError as error:
            if error.status == 413:
                return self._fail(web.Response(status=413, text=PAYLOAD_TOO_LARGE), "payload")
            return self._fail(_error_response(error.status, str(error)))

    def _fail(self, response: web.Response, err: str = "validation") -> web.Response:
        self._model.failed(err)
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
        if truncate is not None and not 0 < truncate <= self._model.max_input_tokens:
            raise InvalidRequestError(
                "`truncate` must be strictly positive and less than "
                f"{self._model.max_input_tokens}. Given: {truncate}"
            )
        ids = await self._model.encode(inputs)
        if truncate is not None:
            ids = ids[-truncate:]  # TGI keeps the end of the prompt
        return self._check_lengths(inputs, ids, max_new_tokens, parameters)

    def _check_lengths(
        self, inputs: str, ids: list[int], max_new_tokens: int | None, parameters: dict[str, Any]
    ) -> Job:
        if max_new_tokens is None:
            max_new_tokens = min(max(self._model.max_total_tokens - len(ids), 0), DEFAULT_GENERATION_LENGTH)
        if len(ids) + max_new_tokens > self._model.max_total_tokens:
            raise InvalidRequestError(
                f"`inputs` tokens + `max_new_tokens` must be <= {self._model.max_total_tokens}. "
                f"Given: {len(ids)} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
            )
        if len(ids) > self._model.max_input_tokens:
            raise InvalidRequestError(
                f"`inputs` must have less than {self._model.max_input_tokens} tokens. Given: {len(ids)}"
            )
        self._model.observe_request(ids, max_new_tokens)
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
            outcome = await self._model.run(job)
        except OverloadedError as error:
            return self._fail(_error_response(429, str(error), "overloaded"), "overloaded")
        except Exception as error:  # a model failure (out of memory, ...): TGI answers 424 and serves on
            return self._fail(_generation_error(error), "generation")
        total_s = self._model.succeeded(outcome, start)
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
        headers = _timing_headers(job, outcome, total_s, self._model.generator.compute_type)
        return web.json_response([result] if as_list else result, headers=headers)

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """Server-sent events as TGI sends them: one per token, the last also carrying the text and details;
        a validation or generation error is an event too (the status is already 200 by then in TGI)."""
        start = time.perf_counter()
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        try:
            job = await self._validate(body)
        except InvalidRequestError as failure:
            self._model.failed("validation")
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
        held: Token | None = None
        index = 0
        try:
            async with contextlib.aclosing(self._model.stream(job)) as pieces:
                async for piece in pieces:
                    if isinstance(piece, Outcome):
                        self._model.succeeded(piece, start)
                        if held is not None:
                            yield _stream_end(index + 1, held, job, piece)
                    else:
                        if held is not None:
                            index += 1
                            yield _stream_token(index, held)
                        held = piece
        except OverloadedError as error:
            self._model.failed("overloaded")
            yield {"error": str(error), "error_type": "overloaded"}
        except Exception as error:  # a model failure: reported in the stream, as TGI does
            self._model.failed("generation")
            yield {"error": f"Request failed during generation: {error}", "error_type": "generation"}


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
