"""OpenAI's HTTP API over the served model, in the shapes vLLM's OpenAI-compatible server answers with.

Endpoints: `GET /v1/models` (one model card, with vLLM's `max_model_len`), `POST /v1/completions` (a text
prompt), `POST /v1/chat/completions` (messages through the model's chat template; a model without one, a
base model, gets a 400 pointing to /v1/completions). `"stream": true` answers server-sent events
(`data: {chunk}` ... `data: [DONE]`), with a last chunk carrying `usage` when `stream_options.include_usage`.
Errors are `{"error": {"message", "type", "param", "code"}}` with vLLM's types (BadRequestError, ...).

Decoding stays greedy. `temperature`, `top_p` and the penalties are accepted and range-checked, not applied:
each response says so in two fields of its own, `decoding: "greedy"` and `ignored_parameters` (those given
with a value that would have changed the answer). `stop` is honoured (the text ends before the first stop
sequence, `finish_reason` "stop", vLLM's `stop_reason` naming it). What cannot be answered faithfully (`n`
> 1, logprobs, tools, echo, ...) is refused with a 400 naming the parameter. The request's `model` is not
checked: one model is served, as in TGI's Messages API (huggingface_hub sends "dummy" when given only a
base URL); responses name the served model.
"""

import asyncio
import contextlib
import json
import math
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from evaluation.dev_engine.model import Job, Outcome, OverloadedError, ServedModel
from evaluation.dev_engine.tgi import DEFAULT_GENERATION_LENGTH, VERSION
from evaluation.dev_engine.wire import SSE_HEADERS, BodyError, read_json_body, shown

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's and vLLM's default for /v1/completions
MAX_STOP_SEQUENCES = 16
# vLLM's error types by status.
_ERROR_TYPES = {
    400: "BadRequestError",
    413: "RequestEntityTooLargeError",
    429: "TooManyRequestsError",
    500: "InternalServerError",
}
# Sampling parameters accepted but not applied: (lowest, highest, the value that leaves greedy as is).
_SAMPLING: dict[str, tuple[float, float, float]] = {
    "temperature": (0.0, 2.0, 0.0),
    "top_p": (0.0, 1.0, 1.0),
    "presence_penalty": (-2.0, 2.0, 0.0),
    "frequency_penalty": (-2.0, 2.0, 0.0),
    "repetition_penalty": (0.0, math.inf, 1.0),
    "min_p": (0.0, 1.0, 0.0),
    "top_k": (-1, math.inf, -1),  # vLLM's: -1 (or 0) considers every token
}
# Options that would change the answer's shape or content and are not implemented: their neutral values.
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "best_of": (None, 1),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "tools": (None, []),
    "logit_bias": (None, {}),
    "response_format": (None, {"type": "text"}),
    "use_beam_search": (None, False),
}
_CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


class OpenAIError(Exception):
    """A request answered with an error in OpenAI's shape; `param` names the field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param

    def as_json(self) -> dict[str, Any]:
        error_type = _ERROR_TYPES.get(self.status, "BadRequestError")
        return {"error": {"message": str(self), "type": error_type, "param": self.param, "code": self.status}}

    def response(self) -> web.Response:
        return web.json_response(self.as_json(), status=self.status)


@dataclass(frozen=True)
class Request:
    """A validated request of either endpoint, ready for the model."""

    job: Job
    stream: bool
    include_usage: bool
    ignored: list[str]  # sampling parameters given but not applied


class OpenAIRoutes:
    def __init__(self, served: ServedModel, payload_limit: int) -> None:
        self._model = served
        self._payload_limit = payload_limit
        self._created = int(time.time())

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat_completions)

    async def _models(self, request: web.Request) -> web.Response:
        card = {
            "id": self._model.model_id,
            "object": "model",
            "created": self._created,
            "owned_by": "quasar",
            "root": self._model.model_id,
            "parent": None,
            "max_model_len": self._model.max_total_tokens,
            "permission": [],
        }
        return web.json_response({"object": "list", "data": [card]})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        start = time.perf_counter()
        self._model.metrics.counts.requests += 1
        try:
            body = await self._read(request)
            parsed = await (self._chat_request(body) if chat else self._completion_request(body))
        except OpenAIError as error:
            self._model.failed("payload" if error.status == 413 else "validation")
            return error.response()
        answer = _Answer(self._model.model_id, chat, parsed)
        if parsed.stream:
            return await self._stream(request, parsed, answer, start)
        try:
            outcome = await self._model.run(parsed.job)
        except OverloadedError as error:
            self._model.failed("overloaded")
            return OpenAIError(429, str(error)).response()
        except Exception as error:  # a model failure (out of memory, ...): vLLM answers 500 and serves on
            self._model.failed("generation")
            return OpenAIError(500, f"Request failed during generation: {error}").response()
        self._model.succeeded(outcome, start)
        return web.json_response(answer.whole(outcome))

    async def _read(self, request: web.Request) -> dict[str, Any]:
        try:
            return await read_json_body(request, self._payload_limit)
        except BodyError as error:
            raise OpenAIError(413 if error.status == 413 else 400, str(error)) from None

    # --- validation

    async def _completion_request(self, body: dict[str, Any]) -> Request:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise OpenAIError(400, "`prompt` must be a string (one prompt per request, as text)", "prompt")
        if not prompt:
            raise OpenAIError(400, "`prompt` cannot be empty", "prompt")
        max_tokens = _optional_count(body, "max_tokens")
        ids = await self._model.encode(prompt)  # with the BOS a completion prompt gets in vLLM
        default = COMPLETIONS_DEFAULT_MAX_TOKENS
        return self._request(body, prompt, ids, max_tokens, default)

    async def _chat_request(self, body: dict[str, Any]) -> Request:
        messages = _messages(body.get("messages"))
        max_tokens = _optional_count(body, "max_completion_tokens") or _optional_count(body, "max_tokens")
        generator = self._model.generator
        if not generator.has_chat_template:
            raise OpenAIError(
                400,
                f"The model `{self._model.model_id}` has no chat template (a base model): send the prompt as "
                "text to /v1/completions instead.",
                "messages",
            )
        try:
            prompt = await asyncio.to_thread(generator.render_chat, messages)
        except Exception as error:  # the template's own refusal (jinja2's TemplateError: roles, order, ...)
            raise OpenAIError(400, f"The chat template refused the messages: {error}", "messages") from None
        ids = await self._model.encode(prompt, add_special_tokens=False)  # the template wrote them
        if not ids:
            raise OpenAIError(400, "the messages make an empty prompt", "messages")
        return self._request(body, prompt, ids, max_tokens, DEFAULT_GENERATION_LENGTH)

    def _request(
        self, body: dict[str, Any], prompt: str, ids: list[int], max_tokens: int | None, default: int
    ) -> Request:
        """The checks both endpoints share, then the job; vLLM's messages for the lengths."""
        stop = _stop_sequences(body.get("stop"))
        stream = _optional_bool(body, "stream")
        include_usage = _include_usage(body.get("stream_options"))
        ignored = _ignored_sampling(body)
        _refuse_unsupported(body)
        total, most_input = self._model.max_total_tokens, self._model.max_input_tokens
        if len(ids) > most_input:
            limit = "context" if most_input == total - 1 else "input"
            raise OpenAIError(
                400,
                f"This model's maximum {limit} length is {total if limit == 'context' else most_input} "
                f"tokens. However, your request has {len(ids)} input tokens. Please reduce the length of "
                "the input messages.",
                "input_tokens",
            )
        if max_tokens is None:
            max_tokens = min(default, total - len(ids))
        elif len(ids) + max_tokens > total:
            raise OpenAIError(
                400,
                f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's maximum "
                f"context length is {total} tokens and your request has {len(ids)} input tokens "
                f"({max_tokens} > {total} - {len(ids)}).",
                "max_tokens",
            )
        self._model.observe_request(ids, max_tokens)
        return Request(Job(prompt, ids, max_tokens, stop=stop), stream, include_usage, ignored)

    # --- streaming

    async def _stream(
        self, request: web.Request, parsed: Request, answer: "_Answer", start: float
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        # aclosing: a client that hangs up ends the generation now, not when the generator is collected.
        async with contextlib.aclosing(self._chunks(parsed, answer, start)) as chunks:
            async for chunk in chunks:
                await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    async def _chunks(
        self, parsed: Request, answer: "_Answer", start: float
    ) -> AsyncGenerator[dict[str, Any], None]:
        text = _StopHoldback(parsed.job.stop)
        if answer.chat:
            yield answer.chunk({"role": "assistant", "content": ""})
        try:
            async with contextlib.aclosing(self._model.stream(parsed.job)) as pieces:
                async for piece in pieces:
                    if isinstance(piece, Outcome):
                        self._model.succeeded(piece, start)
                        yield answer.last_chunk(text.rest(piece.text), piece)
                        if parsed.include_usage:
                            yield answer.usage_chunk(piece)
                    elif not piece.special and (released := text.feed(piece.text)):
                        yield answer.chunk({"content": released} if answer.chat else released)
        except OverloadedError as error:
            self._model.failed("overloaded")
            yield OpenAIError(429, str(error)).as_json()
        except Exception as error:  # a model failure: reported in the stream, as vLLM does
            self._model.failed("generation")
            yield OpenAIError(500, f"Request failed during generation: {error}").as_json()


class _Answer:
    """The response shapes of one request (vLLM's CompletionResponse / ChatCompletionResponse and their
    stream chunks), with the dev engine's own `decoding` and `ignored_parameters`."""

    def __init__(self, model_id: str, chat: bool, parsed: Request) -> None:
        self.chat = chat
        self._parsed = parsed
        self._head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model_id,
        }

    def whole(self, outcome: Outcome) -> dict[str, Any]:
        finish_reason, stop_reason = _finish(outcome)
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": outcome.text, "tool_calls": []}
        else:
            choice["text"] = outcome.text
        choice |= {"logprobs": None, "finish_reason": finish_reason, "stop_reason": stop_reason}
        return self._head | {
            "choices": [choice],
            "usage": self._usage(outcome),
            "system_fingerprint": VERSION,
            "decoding": "greedy",
            "ignored_parameters": self._parsed.ignored,
        }

    def chunk(self, delta: dict[str, Any] | str, outcome: Outcome | None = None) -> dict[str, Any]:
        finish_reason, stop_reason = _finish(outcome) if outcome else (None, None)
        choice: dict[str, Any] = {"index": 0}
        choice |= {"delta": delta} if self.chat else {"text": delta}
        choice |= {"logprobs": None, "finish_reason": finish_reason, "stop_reason": stop_reason}
        head = self._head | {"object": "chat.completion.chunk" if self.chat else "text_completion"}
        return head | {"choices": [choice]}

    def last_chunk(self, rest: str, outcome: Outcome) -> dict[str, Any]:
        chunk = self.chunk({"content": rest} if self.chat else rest, outcome)
        return chunk | {
            "system_fingerprint": VERSION,
            "decoding": "greedy",
            "ignored_parameters": self._parsed.ignored,
        }

    def usage_chunk(self, outcome: Outcome) -> dict[str, Any]:
        head = self._head | {"object": "chat.completion.chunk" if self.chat else "text_completion"}
        return head | {"choices": [], "usage": self._usage(outcome)}

    def _usage(self, outcome: Outcome) -> dict[str, int]:
        prompt, completion = len(self._parsed.job.ids), len(outcome.tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _StopHoldback:
    """Streamed text with stop sequences: text that may be the start of a stop sequence is held back until
    the next token tells, and nothing from a stop sequence on is sent."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        self._stop = stop
        self._hold = max((len(sequence) for sequence in stop), default=1) - 1
        self._text = ""
        self._sent = 0

    def feed(self, piece: str) -> str:
        self._text += piece
        found = [self._text.find(sequence) for sequence in self._stop if sequence in self._text]
        end = min(found) if found else len(self._text) - self._hold
        return self._release(end)

    def rest(self, final_text: str) -> str:
        """What is left to send of the final (already cut) text."""
        self._text = final_text
        return self._release(len(final_text))

    def _release(self, end: int) -> str:
        if end <= self._sent:
            return ""
        released = self._text[self._sent : end]
        self._sent = end
        return released


def _finish(outcome: Outcome) -> tuple[str, str | None]:
    """OpenAI's finish_reason and vLLM's stop_reason (the stop sequence that ended the text)."""
    if outcome.finish_reason == "length":
        return "length", None
    return "stop", outcome.stop_sequence


def _messages(value: Any) -> list[dict[str, str]]:
    """The conversation as the chat template takes it: roles and text contents."""
    if not isinstance(value, list) or not value:
        raise OpenAIError(400, "`messages` must be a non-empty list of messages", "messages")
    conversation = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise OpenAIError(400, f"`{where}` must be an object with `role` and `content`", where)
        role = message.get("role")
        if role not in _CHAT_ROLES:
            raise OpenAIError(400, f"`{where}.role` must be one of {', '.join(_CHAT_ROLES)}", f"{where}.role")
        conversation.append({"role": role, "content": _content(message.get("content"), f"{where}.content")})
    return conversation


def _content(value: Any, where: str) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in value
    ):
        return "\n".join(part["text"] for part in value)
    raise OpenAIError(400, f"`{where}` must be text or a list of text parts (this engine reads text)", where)


def _optional_count(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OpenAIError(400, f"`{name}` must be a positive integer. Given: {shown(value)}", name)
    return value


def _optional_bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise OpenAIError(400, f"`{name}` must be true or false. Given: {shown(value)}", name)
    return value is True


def _include_usage(value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, dict):
        raise OpenAIError(400, "`stream_options` must be an object", "stream_options")
    return _optional_bool(value, "include_usage")


def _stop_sequences(value: Any) -> tuple[str, ...]:
    sequences = [value] if isinstance(value, str) else value
    if sequences is None:
        return ()
    if (
        not isinstance(sequences, list)
        or len(sequences) > MAX_STOP_SEQUENCES
        or not all(isinstance(sequence, str) and sequence for sequence in sequences)
    ):
        raise OpenAIError(
            400,
            f"`stop` must be a non-empty string or a list of at most {MAX_STOP_SEQUENCES} of them. "
            f"Given: {shown(value)}",
            "stop",
        )
    return tuple(sequences)


def _ignored_sampling(body: dict[str, Any]) -> list[str]:
    """The sampling parameters given with a value greedy decoding does not honour; each range-checked."""
    ignored = []
    for name, (lowest, highest, neutral) in _SAMPLING.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not lowest <= value <= highest:
            raise OpenAIError(
                400, f"`{name}` must be a number from {lowest:g} to {highest:g}. Given: {shown(value)}", name
            )
        if value != neutral and not (name == "top_k" and value == 0):
            ignored.append(name)
    return ignored


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for name, neutral in _UNSUPPORTED.items():
        if body.get(name) not in neutral:
            raise OpenAIError(
                400,
                f"`{name}` = {shown(body[name])} is not supported by this development engine "
                "(one greedy choice, text only, no logprobs)",
                name,
            )
