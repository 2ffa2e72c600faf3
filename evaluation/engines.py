"""Engine clients: what a validator (or `quasar eval run`) asks for completions.

- "tgi": HuggingFace text-generation-inference, through `huggingface_hub.AsyncInferenceClient` (TGI's
  maintained client): `/generate` with `details=True`, which reports the generated token count.
- "vllm", "sglang": their OpenAI-compatible API, `/v1/chat/completions` (the server applies the model's
  chat template: instruct models) or `/v1/completions` (the prompt as it is: base models), which report
  prompt and completion token counts; the context length from `/v1/models`' `max_model_len`, readiness
  from vLLM's `/health`. "openai": any other OpenAI-compatible server, the same requests.
- "local": a transformers model run in-process (the built-in tiny model by default), on CUDA when
  available, for smoke runs without any server.

Decoding is greedy everywhere. Every failure surfaces as an EngineError whose message says what happened
(unreachable, timeout, HTTP status with the server's message, prompt too long with the numbers).
"""

import asyncio
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from evaluation.errors import InputError

if TYPE_CHECKING:
    import httpx2
    from huggingface_hub import AsyncInferenceClient

EngineKind = Literal["tgi", "vllm", "sglang", "openai", "local"]
ENGINE_KINDS: tuple[EngineKind, ...] = ("tgi", "vllm", "sglang", "openai", "local")
# How an OpenAI-compatible engine is asked: chat (the server applies the chat template) or plain completions.
EngineApi = Literal["chat", "completions"]

# Engine endpoints are not the Hugging Face Hub: the user's Hub token must not travel to them. A key for an
# endpoint that wants one (vLLM --api-key) comes from this variable instead.
API_KEY_ENV = "QUASAR_ENGINE_API_KEY"
# Failing to connect is quick to tell; waiting for an answer to a 2M-token prompt is not (timeout_s).
_CONNECT_TIMEOUT_S = 10.0
_BODY_EXCERPT_CHARS = 500


EngineFailure = Literal["timeout", "unreachable", "http", "too_long", "other"]


class EngineError(Exception):
    """An engine could not answer; the message names the engine and the reason, `failure` classifies it
    and `status` is the engine's HTTP status where it answered one."""

    def __init__(self, message: str, failure: EngineFailure = "other", status: int | None = None) -> None:
        super().__init__(message)
        self.failure: EngineFailure = failure
        self.status = status


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int | None  # as the engine counted them; None where it does not say
    completion_tokens: int | None
    latency_s: float


@dataclass(frozen=True)
class EngineInfo:
    """What an engine accepts, where it says: a prompt fits when both limits hold."""

    model_id: str | None
    max_input_tokens: int | None
    max_total_tokens: int | None  # prompt + new tokens

    def fits(self, prompt_tokens: int, max_new_tokens: int) -> bool:
        if self.max_input_tokens is not None and prompt_tokens > self.max_input_tokens:
            return False
        return self.max_total_tokens is None or prompt_tokens + max_new_tokens <= self.max_total_tokens


class Engine(Protocol):
    name: str

    async def generate(self, prompt: str, max_new_tokens: int) -> Generation: ...

    async def info(self) -> EngineInfo: ...

    async def aclose(self) -> None: ...


def make_engine(
    kind: EngineKind, endpoint: str | None, model: str | None, timeout_s: float, api: EngineApi = "chat"
) -> Engine:
    """An engine client. `endpoint` is the server's base URL (all but local); `model` is the model name sent
    to an OpenAI-compatible server (default: the first it serves), or the model the local engine runs (a
    folder or Hub id; default: the built-in tiny model). `timeout_s` bounds each request; `api` picks the
    OpenAI-compatible endpoint (chat or completions)."""
    if timeout_s <= 0:
        raise InputError("timeout", f"must be positive, got {timeout_s}")
    if kind == "local":
        if endpoint is not None:
            raise InputError("endpoint", "the local engine runs in-process and takes no endpoint")
        return LocalEngine(model, timeout_s)
    if not endpoint or not endpoint.startswith(("http://", "https://")):
        raise InputError("endpoint", f"the {kind} engine needs an http(s):// base URL, got {endpoint!r}")
    if kind == "tgi":
        return TGIEngine(endpoint, timeout_s)
    if kind in DIALECTS:
        if api not in ("chat", "completions"):
            raise InputError("api", f"unknown API {api!r}; choose from chat, completions")
        return OpenAIEngine(DIALECTS[kind], endpoint, model, api, timeout_s)
    raise InputError("engine", f"unknown engine kind {kind!r}; choose from {', '.join(ENGINE_KINDS)}")


class _HTTPEngine:
    """Shared plumbing of the HTTP engines: one client and HTTP session each, and error translation."""

    def __init__(self, name: str, endpoint: str, timeout_s: float) -> None:
        from huggingface_hub import AsyncInferenceClient

        self.name = name
        self._endpoint = endpoint.rstrip("/")
        self._timeout_s = timeout_s
        self._client: AsyncInferenceClient = AsyncInferenceClient(base_url=self._endpoint, timeout=timeout_s)
        self._session: httpx2.AsyncClient | None = None

    async def _open(self) -> "AsyncInferenceClient":
        """The client, on a session of our own. The library's default session refuses every request when
        HF_HUB_OFFLINE is set, which air-gapped validators set, though an engine endpoint is not the Hub."""
        if self._session is None:
            import httpx2

            self._session = httpx2.AsyncClient(
                timeout=httpx2.Timeout(self._timeout_s, connect=min(_CONNECT_TIMEOUT_S, self._timeout_s)),
                follow_redirects=True,
                event_hooks={"request": [_set_authorization]},
            )
            self._client._async_client = self._session  # the client's lazily created session slot
        return self._client

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.aclose()
            self._session = None

    async def _get_json(self, path: str, missing_ok: bool = False, expect_json: bool = True) -> Any:
        """GET a JSON document from the engine, bounded by the timeout; None for a 404 if `missing_ok`, or
        for any success if not `expect_json` (a health endpoint: its status is the answer)."""
        await self._open()
        assert self._session is not None
        with self._errors():
            response = await self._session.get(self._endpoint + path)
        if missing_ok and response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise EngineError(
                f"{self.name}: GET {path}: {_status_problem(response)}", "http", response.status_code
            )
        if not expect_json:
            return None
        try:
            return response.json()
        except ValueError:
            raise EngineError(f"{self.name}: GET {path}: the answer is not JSON") from None

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn the HTTP stack's exceptions into EngineErrors that say what happened."""
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError, TextGenerationError

        try:
            yield
        except (InferenceTimeoutError, httpx2.TimeoutException, TimeoutError) as error:
            raise self._timeout() from error
        except HfHubHTTPError as error:
            status = error.response.status_code
            raise EngineError(f"{self.name}: {_status_problem(error.response)}", "http", status) from error
        except TextGenerationError as error:
            # TGI's error payload, parsed by the client; the HTTP error (with the status) is its cause.
            cause = error.__cause__
            code = cause.response.status_code if isinstance(cause, HfHubHTTPError) else None
            said = f"HTTP {code}: " if code is not None else ""
            raise EngineError(f"{self.name}: {said}{error}", "http", code) from error
        except httpx2.HTTPError as error:
            raise EngineError(
                f"{self.name}: cannot reach the engine: {error or type(error).__name__}", "unreachable"
            ) from error

    def _timeout(self) -> EngineError:
        return EngineError(f"{self.name}: no answer within {self._timeout_s:g} s (timeout)", "timeout")


async def _set_authorization(request: "httpx2.Request") -> None:
    """Request hook: drop the Hub token the client adds; send QUASAR_ENGINE_API_KEY instead, if set."""
    request.headers.pop("authorization", None)
    key = os.environ.get(API_KEY_ENV)
    if key:
        request.headers["authorization"] = f"Bearer {key}"


def _status_problem(response: "httpx2.Response") -> str:
    """`HTTP 422: <the server's message>`, the message cut to a readable length."""
    try:
        body = response.text
    except Exception:  # a streamed body that was never read: the status alone must do
        body = ""
    try:
        message = _error_message(response.json()) or body
    except ValueError:
        message = body
    message = " ".join(str(message).split())
    if len(message) > _BODY_EXCERPT_CHARS:
        message = message[:_BODY_EXCERPT_CHARS] + "…"
    return f"HTTP {response.status_code}: {message or response.reason_phrase}"


def _error_message(payload: Any) -> str | None:
    """The message in an engine's JSON error: TGI's `{"error": "..."}`, vLLM's and OpenAI's
    `{"error": {"message": ...}}`, SGLang's `{"object": "error", "message": ...}`."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    message = error if isinstance(error, str) else payload.get("message")
    return message if isinstance(message, str) else None


class TGIEngine(_HTTPEngine):
    def __init__(self, endpoint: str, timeout_s: float) -> None:
        super().__init__(f"tgi {endpoint.rstrip('/')}", endpoint, timeout_s)

    async def generate(self, prompt: str, max_new_tokens: int) -> Generation:
        client = await self._open()
        start = time.perf_counter()
        with self._errors():
            output = await client.text_generation(
                prompt, max_new_tokens=max_new_tokens, details=True, do_sample=False
            )
        latency = time.perf_counter() - start
        # TGI reports the prompt's tokens only with decoder_input_details, as a list of every token:
        # megabytes of JSON for a long prompt. The caller counts prompts itself.
        completion_tokens = output.details.generated_tokens if output.details else None
        return Generation(output.generated_text, None, completion_tokens, latency)

    async def info(self) -> EngineInfo:
        info = await self._get_json("/info")
        return EngineInfo(
            model_id=info.get("model_id"),
            # TGI 2 renamed max_input_length to max_input_tokens.
            max_input_tokens=info.get("max_input_tokens", info.get("max_input_length")),
            max_total_tokens=info.get("max_total_tokens"),
        )


@dataclass(frozen=True)
class OpenAIDialect:
    """What differs between OpenAI-compatible servers: the health endpoint the engine answers cheaply, and
    how its context length (`max_model_len` on /v1/models) bounds a request."""

    kind: str
    health_path: str | None  # None: the server has none worth asking every few seconds
    listing_required: bool  # False: a server without /v1/models is taken on trust (the model must be named)
    # (max_input_tokens, max_total_tokens) for a context length: each server draws the line differently.
    limits: Callable[[int], tuple[int | None, int | None]]


DIALECTS = {
    # vLLM refuses a prompt of max_model_len tokens or more, and prompt + max_tokens over max_model_len
    # (vllm/entrypoints/openai/engine/serving.py). GET /health is 200 while the engine core is alive.
    "vllm": OpenAIDialect("vllm", "/health", True, lambda length: (length - 1, length)),
    # SGLang refuses a prompt of context_len tokens or more, and prompt + max_new_tokens of context_len or
    # more (python/sglang/srt/managers/tokenizer_manager.py). Its /health runs a one-token generation, too
    # costly to ask every few seconds; /v1/models answers only once the model is loaded.
    "sglang": OpenAIDialect("sglang", None, True, lambda length: (length - 1, length - 1)),
    # Any other OpenAI-compatible server: max_model_len where it says one, vLLM's meaning assumed.
    "openai": OpenAIDialect("openai", None, False, lambda length: (None, length)),
}


class OpenAIEngine(_HTTPEngine):
    """vLLM, SGLang or another OpenAI-compatible server: `/v1/completions` (the prompt as it is) or
    `/v1/chat/completions` (one user message; the server applies the model's chat template)."""

    def __init__(
        self, dialect: OpenAIDialect, endpoint: str, model: str | None, api: EngineApi, timeout_s: float
    ) -> None:
        super().__init__(f"{dialect.kind} {endpoint.rstrip('/')}", endpoint, timeout_s)
        self._dialect = dialect
        self._model = model
        self._api = api
        # The endpoint may be given with or without the /v1 suffix.
        self._v1 = "" if self._endpoint.endswith("/v1") else "/v1"

    async def generate(self, prompt: str, max_new_tokens: int) -> Generation:
        model = self._model or (await self.info()).model_id
        body: dict[str, Any] = {"model": model, "max_tokens": max_new_tokens, "temperature": 0.0}
        if self._api == "chat":
            path, body["messages"] = "/chat/completions", [{"role": "user", "content": prompt}]
        else:
            path, body["prompt"] = "/completions", prompt
        start = time.perf_counter()
        answer = await self._post_json(self._v1 + path, body)
        latency = time.perf_counter() - start
        try:
            choice = answer["choices"][0]
            text = choice["message"]["content"] if self._api == "chat" else choice["text"]
            usage = answer.get("usage") or {}
        except (KeyError, IndexError, TypeError):
            raise EngineError(
                f"{self.name}: the answer has no {self._api} choice: {str(answer)[:200]}"
            ) from None
        return Generation(text or "", usage.get("prompt_tokens"), usage.get("completion_tokens"), latency)

    async def _post_json(self, path: str, body: dict[str, Any]) -> Any:
        await self._open()
        assert self._session is not None
        with self._errors():
            response = await self._session.post(self._endpoint + path, json=body)
        if response.status_code >= 400:
            problem = _status_problem(response)
            too_long = response.status_code == 400 and _LENGTH_REFUSAL.search(problem) is not None
            failure: EngineFailure = "too_long" if too_long else "http"
            raise EngineError(f"{self.name}: {problem}", failure, response.status_code)
        try:
            return response.json()
        except ValueError:
            raise EngineError(f"{self.name}: POST {path}: the answer is not JSON") from None

    async def info(self) -> EngineInfo:
        if self._dialect.health_path is not None:
            await self._get_json(self._dialect.health_path, expect_json=False)
        path = self._v1 + "/models"
        listing = await self._get_json(path, missing_ok=not self._dialect.listing_required)
        if listing is None:  # a server without the listing: the model name must be given
            if self._model is None:
                raise EngineError(f"{self.name}: no {path} to learn the model name from; pass it")
            return EngineInfo(self._model, None, None)
        models = listing.get("data") or []
        if self._model is None and models:
            self._model = models[0]["id"]
        chosen = next((m for m in models if m.get("id") == self._model), None)
        if chosen is None:
            served = ", ".join(repr(m.get("id")) for m in models) or "none"
            raise EngineError(f"{self.name}: does not serve model {self._model!r} (it serves: {served})")
        length = chosen.get("max_model_len")
        if not isinstance(length, int) or isinstance(length, bool) or length < 2:
            return EngineInfo(self._model, None, None)
        return EngineInfo(self._model, *self._dialect.limits(length))


# The engines' words for a prompt over the context length: vLLM's "This model's maximum context length is
# N tokens. However, your request has M input tokens..." and "'max_tokens' or 'max_completion_tokens' is
# too large..."; SGLang's "The input (M tokens) is longer than the model's context length (N tokens)." and
# "Requested token count exceeds the model's maximum context length of N tokens...".
_LENGTH_REFUSAL = re.compile(
    r"maximum (context|input) length|longer than the model's context length|'max_tokens' or"
)


@dataclass(frozen=True)
class LoadedModel:
    tokenizer: Any  # transformers tokenizer
    model: Any  # transformers causal LM, in eval mode on its device
    max_total_tokens: int | None


class LocalEngine:
    """A transformers model in this process. `model.generate` runs in a worker thread so the event loop
    stays free; one generation at a time, since concurrent ones would only share the same cores or GPU."""

    def __init__(self, model: str | None, timeout_s: float) -> None:
        from evaluation.local_model import ensure_local_model

        self._source = model or str(ensure_local_model())
        self.name = f"local:{self._source}"
        self._timeout_s = timeout_s
        self._loaded: LoadedModel | None = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()

    async def generate(self, prompt: str, max_new_tokens: int) -> Generation:
        start = time.perf_counter()
        try:
            text, prompt_tokens, completion_tokens = await asyncio.wait_for(
                asyncio.to_thread(self._generate, prompt, max_new_tokens), self._timeout_s
            )
        except TimeoutError:
            raise EngineError(
                f"{self.name}: no answer within {self._timeout_s:g} s (timeout)", "timeout"
            ) from None
        return Generation(text, prompt_tokens, completion_tokens, time.perf_counter() - start)

    async def info(self) -> EngineInfo:
        loaded = await asyncio.to_thread(self._load)
        return EngineInfo(self._source, None, loaded.max_total_tokens)

    async def aclose(self) -> None:
        self._loaded = None

    def _load(self) -> LoadedModel:
        with self._load_lock:
            if self._loaded is None:
                self._loaded = load_local_model(self.name, self._source)
            return self._loaded

    def _generate(self, prompt: str, max_new_tokens: int) -> tuple[str, int, int]:
        import torch

        loaded = self._load()
        # Special tokens (a BOS) as TGI adds them; the Rust encoder has no max-length warning.
        ids = loaded.tokenizer.backend_tokenizer.encode(prompt, add_special_tokens=True).ids
        limit = loaded.max_total_tokens
        if limit is not None and len(ids) + max_new_tokens > limit:
            raise EngineError(
                f"{self.name}: prompt too long: {len(ids)} prompt tokens + {max_new_tokens} new tokens "
                f"> {limit}, the most this engine runs",
                "too_long",
            )
        model = loaded.model
        input_ids = torch.tensor([ids], dtype=torch.long, device=model.device)
        with self._run_lock, torch.inference_mode():
            output = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=loaded.tokenizer.pad_token_id or loaded.tokenizer.eos_token_id,
                # Stops decoding (not prefill) past the deadline, so a timed-out call frees the model soon.
                max_time=self._timeout_s,
            )
        new_tokens = output[0, len(ids) :]
        return loaded.tokenizer.decode(new_tokens, skip_special_tokens=True), len(ids), len(new_tokens)


def load_local_model(name: str, source: str) -> LoadedModel:
    """Tokenizer and model, on CUDA in bfloat16 when there is a GPU, else on CPU in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluation.local_model import quiet_progress_bars

    cuda = torch.cuda.is_available()
    dtype_argument = {_dtype_argument(): torch.bfloat16 if cuda else torch.float32}

    def load(local_files_only: bool) -> tuple[Any, Any]:
        with quiet_progress_bars():
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
            model = AutoModelForCausalLM.from_pretrained(
                source, local_files_only=local_files_only, **dtype_argument
            )
        return tokenizer, model

    tokenizer, model = _from_folder_cache_or_hub(name, source, load)
    model.to("cuda" if cuda else "cpu").eval()
    # The built-in model's limit is LOCAL_MAX_TOTAL_TOKENS, set as its max_position_embeddings.
    return LoadedModel(tokenizer, model, getattr(model.config, "max_position_embeddings", None))


def _from_folder_cache_or_hub(
    name: str, source: str, load: Callable[[bool], tuple[Any, Any]]
) -> tuple[Any, Any]:
    """`load(local_files_only)` from a folder or the HF cache first; from the Hub only when it is reachable
    (offline, the Hub client would retry for ~45 s before failing)."""
    from evaluation.tokenizer import hub_unreachable

    try:
        return load(True)
    except OSError as error:
        if Path(source).exists():
            raise EngineError(f"{name}: cannot load the model: {error}") from None
    unreachable = hub_unreachable()
    if unreachable:
        raise EngineError(f"{name}: not a local folder, not in the HF cache, and {unreachable}")
    try:
        return load(False)
    except OSError as error:
        raise EngineError(f"{name}: cannot load the model from the Hub: {error}") from None


def _dtype_argument() -> str:
    """transformers 4.56 renamed from_pretrained's torch_dtype to dtype (5 warns on the old name)."""
    from importlib.metadata import version

    major, minor = (int(part) for part in version("transformers").split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
