"""A fake text-generation-inference server for tests: real HTTP on 127.0.0.1, an ephemeral port.

It speaks the parts of TGI's API the engine clients use, in TGI's JSON shapes: `POST /generate` and
`POST /` (what `AsyncInferenceClient.text_generation` posts to a base URL; TGI answers a one-element
list there), `POST /v1/chat/completions` (TGI's Messages API, as vLLM and SGLang serve it), `GET /info`,
`GET /health`, `GET /v1/models` and `GET /metrics` (the autoscaling gauges `tgi_queue_size` and
`tgi_batch_current_size`, which TGI also serves on its `--prometheus-port`: `at(host, port, 9000)`).

It runs in a thread with its own event loop, so synchronous tests (and code that calls `asyncio.run`)
can use it:

    with FakeTGI(answer=lambda prompt: "42") as server:
        ... server.url ...
        assert server.requests[0].path == "/"

Answers, latency, limits and failures are plain attributes; set them before or between requests.
"""

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from tests.fake_server import Failure, RecordedRequest, ThreadedServer

TGI_PAYLOAD_LIMIT = 2_000_000  # TGI's default --payload-limit, in bytes


def tgi_validation_error(message: str) -> Failure:
    """A 422 as TGI sends it when a request fails validation (e.g. too many input tokens)."""
    return Failure(422, {"error": f"Input validation error: {message}", "error_type": "validation"})


@dataclass
class FakeTGI(ThreadedServer):
    thread_name = "fake-tgi"
    # The generated text: a fixed string, or a function of the prompt (a chat request's last message).
    answer: str | Callable[[str], str] = "fake answer"
    # Tokens in a text, for details.generated_tokens, usage and the length limits (default: words).
    count_tokens: Callable[[str], int] = field(default=lambda text: len(text.split()))
    latency_s: float = 0.0  # added before each generation answers
    model_id: str = "fake/model"
    max_input_tokens: int = 4095
    max_total_tokens: int = 4096
    payload_limit: int = TGI_PAYLOAD_LIMIT  # bytes; larger bodies get TGI's 413
    models_listing: bool = True  # serve GET /v1/models (as vLLM and SGLang do); else 404
    queue_size: int = 0  # requests waiting, as /metrics reports them
    batch_size: int = 0  # requests in the running batch, as /metrics reports them
    # Answered in order, one per generation request, before generating anything.
    failures: list[Failure] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)

    def _app(self) -> web.Application:
        # The fake enforces payload_limit itself, with TGI's message; aiohttp's own limit only caps memory.
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/", self._generate_compat)
        app.router.add_post("/generate", self._generate)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/info", self._info)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        registry = CollectorRegistry()
        Gauge("tgi_queue_size", "Current queue size", registry=registry).set(self.queue_size)
        Gauge("tgi_batch_current_size", "Current batch size", registry=registry).set(self.batch_size)
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _record(self, request: web.Request) -> Any:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.requests.append(RecordedRequest(request.method, request.path, body, dict(request.headers)))
        return body

    async def _refusal(self, request: web.Request, prompt: str, max_new_tokens: int) -> web.Response | None:
        """What TGI would answer instead of generating, if anything: a queued failure, then its limits."""
        if self.failures:
            return self.failures.pop(0).response()
        if (request.content_length or 0) > self.payload_limit:
            return web.Response(status=413, text="Failed to buffer the request body: length limit exceeded")
        tokens = self.count_tokens(prompt)
        if tokens > self.max_input_tokens:
            error = f"`inputs` must have less than {self.max_input_tokens} tokens. Given: {tokens}"
            return tgi_validation_error(error).response()
        if tokens + max_new_tokens > self.max_total_tokens:
            error = (
                f"`inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. "
                f"Given: {tokens} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
            )
            return tgi_validation_error(error).response()
        return None

    def _answer(self, prompt: str) -> str:
        return self.answer(prompt) if callable(self.answer) else self.answer

    async def _generate_compat(self, request: web.Request) -> web.Response:
        return await self._generate(request, as_list=True)

    async def _generate(self, request: web.Request, as_list: bool = False) -> web.Response:
        body = await self._record(request)
        prompt = body["inputs"]
        parameters = body.get("parameters") or {}
        max_new_tokens = parameters.get("max_new_tokens") or 100
        refusal = await self._refusal(request, prompt, max_new_tokens)
        if refusal is not None:
            return refusal
        await asyncio.sleep(self.latency_s)
        text = self._answer(prompt)
        generated = self.count_tokens(text)
        result: dict[str, Any] = {"generated_text": text}
        if parameters.get("details"):
            words = text.split()
            result["details"] = {
                "finish_reason": "length" if generated >= max_new_tokens else "eos_token",
                "generated_tokens": generated,
                "seed": None,
                "prefill": [],
                "tokens": [
                    {"id": i, "text": w, "logprob": -0.5, "special": False} for i, w in enumerate(words)
                ],
                "top_tokens": None,
                "best_of_sequences": None,
            }
        return web.json_response([result] if as_list else result)

    async def _chat(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        prompt = body["messages"][-1]["content"]
        max_new_tokens = body.get("max_tokens") or 100
        refusal = await self._refusal(request, prompt, max_new_tokens)
        if refusal is not None:
            return refusal
        await asyncio.sleep(self.latency_s)
        text = self._answer(prompt)
        prompt_tokens, completion_tokens = self.count_tokens(prompt), self.count_tokens(text)
        return web.json_response(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model") or self.model_id,
                "system_fingerprint": "fake-tgi",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": "length" if completion_tokens >= max_new_tokens else "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    async def _info(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response(
            {
                "model_id": self.model_id,
                "model_sha": None,
                "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": 128,
                "max_best_of": 2,
                "max_stop_sequences": 4,
                "max_input_tokens": self.max_input_tokens,
                "max_total_tokens": self.max_total_tokens,
                "validation_workers": 2,
                "max_client_batch_size": 4,
                "router": "text-generation-router",
                "version": "3.3.0",
            }
        )

    async def _health(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(status=200)

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self.models_listing:
            return web.Response(status=404)
        model = {
            "id": self.model_id,
            "object": "model",
            "owned_by": "fake",
            "max_model_len": self.max_total_tokens,
        }
        return web.json_response({"object": "list", "data": [model]})
