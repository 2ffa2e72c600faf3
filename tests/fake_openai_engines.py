"""Test doubles for vLLM and SGLang: real HTTP on 127.0.0.1, an ephemeral port, their own shapes.

Written from the engines' source (read, not copied), so the miner and the operator are tested against
what the real servers say:

vLLM (github.com/vllm-project/vllm)
- routes: `GET /health` (200 while the engine core lives, 503 when it is dead), `GET /v1/models` (model
  cards with `max_model_len`), `POST /v1/completions`, `POST /v1/chat/completions`, `GET /metrics`:
  vllm/entrypoints/openai/api_server.py, vllm/entrypoints/openai/models/serving.py.
- request and response shapes (`text_completion` / `chat.completion` objects, `usage`, `stop_reason`):
  vllm/entrypoints/openai/protocol.py, vllm/entrypoints/openai/completion/protocol.py,
  vllm/entrypoints/openai/chat_completion/protocol.py.
- errors: `{"error": {"message", "type": "BadRequestError", "param", "code": 400}}`; the length refusals
  "This model's maximum context length is N tokens. However, your request has M input tokens. ..." (a
  prompt of N tokens or more) and "'max_tokens' or 'max_completion_tokens' is too large: ..." (prompt +
  max_tokens over N): vllm/entrypoints/openai/engine/serving.py (`_validate_input`),
  vllm/entrypoints/openai/engine/protocol.py (ErrorResponse).
- metrics: gauges `vllm:num_requests_running` ("Number of requests in model execution batches.") and
  `vllm:num_requests_waiting` ("Number of requests waiting to be processed."), counters
  `vllm:prompt_tokens_total` and `vllm:generation_tokens_total`, labelled `model_name` and `engine`:
  vllm/v1/metrics/loggers.py (PrometheusStatLogger).

SGLang (github.com/sgl-project/sglang)
- routes: `GET /health` and `GET /health_generate` (both run a one-token generation; 503 while starting or
  unhealthy), `GET /get_model_info` (model_path, tokenizer_path, is_generation, ...; no context length),
  `GET /v1/models` (cards with `max_model_len` = the model's context_len), `POST /v1/completions`,
  `POST /v1/chat/completions`, `GET /metrics`: python/sglang/srt/entrypoints/http_server.py.
- shapes (`matched_stop` in choices, `reasoning_content` in chat messages):
  python/sglang/srt/entrypoints/openai/protocol.py.
- errors: `{"object": "error", "message", "type": "BadRequestError", "param": null, "code": 400}`; the
  length refusals "The input (M tokens) is longer than the model's context length (N tokens)." (a prompt
  of N tokens or more) and "Requested token count exceeds the model's maximum context length of N tokens.
  ..." (prompt + max_new_tokens of N or more): python/sglang/srt/managers/tokenizer_manager.py
  (`_validate_one_request`).
- metrics: gauges `sglang:num_running_reqs` ("The number of running requests.") and
  `sglang:num_queue_reqs` ("The number of requests in the waiting queue."), counters
  `sglang:prompt_tokens_total` and `sglang:generation_tokens_total`, labelled `model_name`:
  python/sglang/srt/metrics/collector.py (SchedulerMetricsCollector, TokenizerMetricsCollector).

What the doubles do not do: stream, sample, batch, check the `model` field on SGLang. A chat request's
prompt is the user message inside a toy chat template (CHAT_OPENING + content + CHAT_CLOSING), applied by
the server as the real ones apply the model's, so its token count is larger than the raw content's.
At most `max_running` requests generate at once (vLLM's --max-num-seqs, SGLang's --max-running-requests);
the rest wait, and the gauges count both.

    with FakeVLLM(answer="42") as engine:
        ... engine.url ...; engine.requests[-1].path == "/v1/chat/completions"
"""

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from tests.fake_server import Failure, RecordedRequest, ThreadedServer

# The toy chat template the doubles apply to a chat request's user message, as a server applies the model's.
CHAT_OPENING = "<|im_start|>user\n"
CHAT_CLOSING = "<|im_end|>\n<|im_start|>assistant\n"


def vllm_error(
    status: int, message: str, error_type: str = "BadRequestError", param: str | None = None
) -> Failure:
    """An error as vLLM's OpenAI server answers it."""
    return Failure(
        status, {"error": {"message": message, "type": error_type, "param": param, "code": status}}
    )


def sglang_error(status: int, message: str, error_type: str = "BadRequestError") -> Failure:
    """An error as SGLang's OpenAI server answers it."""
    return Failure(
        status, {"object": "error", "message": message, "type": error_type, "param": None, "code": status}
    )


@dataclass
class FakeOpenAIEngine(ThreadedServer):
    """What the two doubles share: the thread, the queue, the OpenAI routes. Subclasses say the rest."""

    kind: ClassVar[Literal["vllm", "sglang"]]
    # The generated text: a fixed string or a function of the prompt (for chat: the user message).
    answer: str | Callable[[str], str] = "fake answer"
    # Tokens in a text, for usage and the length checks (default: whitespace-separated words).
    count_tokens: Callable[[str], int] = field(default=lambda text: len(text.split()))
    latency_s: float = 0.0  # each generation holds its slot this long
    model_id: str = "fake/model"
    max_model_len: int = 4096
    max_running: int = 4
    healthy: bool = True  # False: the health endpoints answer 503 (a dead engine core, a wedged scheduler)
    # Answered in order, one per generation request, instead of generating.
    failures: list[Failure] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.running = 0  # requests generating now
        self.waiting = 0  # requests queued for a slot
        self.thread_name = f"fake-{self.kind}"
        self._slots: asyncio.Semaphore | None = None
        self._prompt_tokens = 0
        self._generation_tokens = 0

    def _on_loop(self) -> None:
        self._slots = asyncio.Semaphore(self.max_running)

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        self._add_routes(app)
        return app

    # --- what each engine says its own way

    def _add_routes(self, app: web.Application) -> None:
        """Routes only this engine has."""

    def _model_card(self) -> dict[str, Any]:
        raise NotImplementedError

    def _length_refusal(self, prompt_tokens: int, max_tokens: int | None) -> Failure | None:
        raise NotImplementedError

    def _model_refusal(self, model: Any) -> Failure | None:
        return None

    def _choice_extras(self, chat: bool) -> dict[str, Any]:
        raise NotImplementedError

    def _gauges(self) -> tuple[tuple[str, str], tuple[str, str], dict[str, str]]:
        """The running and waiting gauges (name, help), and their labels."""
        raise NotImplementedError

    # --- shared

    async def _record(self, request: web.Request) -> Any:
        body = await request.json() if request.can_read_body else None
        self.requests.append(RecordedRequest(request.method, request.path, body, dict(request.headers)))
        return body

    async def _health(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(status=200 if self.healthy else 503)

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"object": "list", "data": [self._model_card()]})

    async def _completions(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        return await self._generate(body, body["prompt"], chat=False)

    async def _chat(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        content = body["messages"][-1]["content"]
        return await self._generate(body, CHAT_OPENING + content + CHAT_CLOSING, chat=True, asked=content)

    async def _generate(
        self, body: dict[str, Any], prompt: str, chat: bool, asked: str | None = None
    ) -> web.Response:
        if self.failures:
            return self.failures.pop(0).response()
        refusal = self._model_refusal(body.get("model"))
        prompt_tokens = self.count_tokens(prompt)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        refusal = refusal or self._length_refusal(prompt_tokens, max_tokens)
        if refusal is not None:
            return refusal.response()
        limit = max_tokens or self.max_model_len - prompt_tokens
        assert self._slots is not None
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            await asyncio.sleep(self.latency_s)
        finally:
            self.running -= 1
            self._slots.release()
        source = prompt if asked is None else asked
        text = self.answer(source) if callable(self.answer) else self.answer
        completion_tokens = self.count_tokens(text)
        self._prompt_tokens += prompt_tokens
        self._generation_tokens += completion_tokens
        finish = "length" if completion_tokens >= limit else "stop"
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if chat:
            choice["message"] = {"role": "assistant", "content": text, **self._message_extras()}
        else:
            choice["text"] = text
        choice |= self._choice_extras(chat)
        return web.json_response(
            {
                "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": body.get("model") or self.model_id,
                "choices": [choice],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                    "completion_tokens": completion_tokens,
                    "prompt_tokens_details": None,
                },
            }
        )

    def _message_extras(self) -> dict[str, Any]:
        return {"reasoning_content": None, "tool_calls": []}

    async def _metrics(self, request: web.Request) -> web.Response:
        registry = CollectorRegistry()
        running, waiting, labels = self._gauges()
        names = list(labels)
        Gauge(*running, names, registry=registry).labels(**labels).set(self.running)
        Gauge(*waiting, names, registry=registry).labels(**labels).set(self.waiting)
        prefix = self.kind
        prompt = Counter(
            f"{prefix}:prompt_tokens", "Number of prefill tokens processed.", names, registry=registry
        )
        prompt.labels(**labels).inc(self._prompt_tokens)
        generation = Counter(
            f"{prefix}:generation_tokens", "Number of generation tokens processed.", names, registry=registry
        )
        generation.labels(**labels).inc(self._generation_tokens)
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


@dataclass
class FakeVLLM(FakeOpenAIEngine):
    kind: ClassVar[Literal["vllm", "sglang"]] = "vllm"
    version: str = "0.11.0"

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/version", self._version)

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self.version})

    def _model_card(self) -> dict[str, Any]:
        created = int(time.time())
        return {
            "id": self.model_id,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": self.model_id,
            "parent": None,
            "max_model_len": self.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{uuid.uuid4().hex}",
                    "object": "model_permission",
                    "created": created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }

    def _model_refusal(self, model: Any) -> Failure | None:
        if model is None or model == self.model_id:
            return None
        return vllm_error(404, f"The model `{model}` does not exist.", "NotFoundError", "model")

    def _length_refusal(self, prompt_tokens: int, max_tokens: int | None) -> Failure | None:
        length = self.max_model_len
        if prompt_tokens >= length:
            return vllm_error(
                400,
                f"This model's maximum context length is {length} tokens. However, your request has "
                f"{prompt_tokens} input tokens. Please reduce the length of the input messages.",
                param="input_tokens",
            )
        if max_tokens is not None and prompt_tokens + max_tokens > length:
            return vllm_error(
                400,
                f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's maximum "
                f"context length is {length} tokens and your request has {prompt_tokens} input tokens "
                f"({max_tokens} > {length} - {prompt_tokens}).",
                param="max_tokens",
            )
        return None

    def _choice_extras(self, chat: bool) -> dict[str, Any]:
        return {"stop_reason": None} if chat else {"stop_reason": None, "prompt_logprobs": None}

    def _gauges(self) -> tuple[tuple[str, str], tuple[str, str], dict[str, str]]:
        return (
            ("vllm:num_requests_running", "Number of requests in model execution batches."),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed."),
            {"model_name": self.model_id, "engine": "0"},
        )


@dataclass
class FakeSGLang(FakeOpenAIEngine):
    kind: ClassVar[Literal["vllm", "sglang"]] = "sglang"

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/health_generate", self._health)
        app.router.add_get("/get_model_info", self._model_info)

    async def _model_info(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response(
            {
                "model_path": self.model_id,
                "tokenizer_path": self.model_id,
                "is_generation": True,
                "preferred_sampling_params": None,
                "weight_version": "default",
            }
        )

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self.model_id,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "sglang",
            "root": self.model_id,
            "max_model_len": self.max_model_len,
        }

    def _length_refusal(self, prompt_tokens: int, max_tokens: int | None) -> Failure | None:
        length = self.max_model_len
        if prompt_tokens >= length:
            return sglang_error(
                400,
                f"The input ({prompt_tokens} tokens) is longer than the model's context length "
                f"({length} tokens).",
            )
        if max_tokens is not None and prompt_tokens + max_tokens >= length:
            return sglang_error(
                400,
                f"Requested token count exceeds the model's maximum context length of {length} tokens. "
                f"You requested a total of {prompt_tokens + max_tokens} tokens: {prompt_tokens} tokens "
                f"from the input messages and {max_tokens} tokens for the completion. Please reduce the "
                "number of tokens in the input messages or the completion to fit within the limit.",
            )
        return None

    def _choice_extras(self, chat: bool) -> dict[str, Any]:
        return {"matched_stop": None}

    def _message_extras(self) -> dict[str, Any]:
        return {"reasoning_content": None, "tool_calls": None}

    def _gauges(self) -> tuple[tuple[str, str], tuple[str, str], dict[str, str]]:
        return (
            ("sglang:num_running_reqs", "The number of running requests."),
            ("sglang:num_queue_reqs", "The number of requests in the waiting queue."),
            {"model_name": self.model_id},
        )
