"""Engine clients: what a validator (or `quasar eval run`) asks for completions.

- "tgi": HuggingFace text-generation-inference, through `huggingface_hub.AsyncInferenceClient` (TGI's
  maintained client): `/generate` with `details=True`, which reports the generated token count.
- "openai": an OpenAI-compatible server (vLLM, SGLang, TGI's Messages API) through the same client's
  `chat_completion`, which reports prompt and completion token counts.
- "local": a transformers model run in-process (the built-in tiny model by default), on CUDA when
  available, for smoke runs without any server.

Decoding is greedy everywhere. Every failure surfaces as an EngineError whose message says what happened
(unreachable, timeout, HTTP status with the server's message, prompt too long with the numbers).
"""

import asyncio
import os
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

EngineKind = Literal["tgi", "openai", "local"]

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


def make_engine(kind: EngineKind, endpoint: str | None, model: str | None, timeout_s: float) -> Engine:
    """An engine client. `endpoint` is the server's base URL (tgi, openai); `model` is the model name sent to
    an OpenAI-compatible server (default: the first it serves), or the model the local engine runs (a
    folder or Hub id; default: the built-in tiny model). `timeout_s` bounds each request."""
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
    if kind == "openai":
        return OpenAIEngine(endpoint, model, timeout_s)
    raise InputError("engine", f"unknown engine kind {kind!r}; choose from tgi, openai, local")


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

    async def _get_json(self, path: str, missing_ok: bool = False) -> Any:
        """GET a JSON document from the engine, bounded by the timeout; None for a 404 if `missing_ok`."""
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
        message = response.json().get("error") or body
    except ValueError:
        message = body
    except AttributeError:  # JSON, but not an object
        message = body
    message = " ".join(str(message).split())
    if len(message) > _BODY_EXCERPT_CHARS:
        message = message[:_BODY_EXCERPT_CHARS] + "…"
    return f"HTTP {response.status_code}: {message or response.reason_phrase}"


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


class OpenAIEngine(_HTTPEngine):
    def __init__(self, endpoint: str, model: str | None, timeout_s: float) -> None:
        super().__init__(f"openai {endpoint.rstrip('/')}", endpoint, timeout_s)
        self._model = model

    async def generate(self, prompt: str, max_new_tokens: int) -> Generation:
        model = self._model or (await self.info()).model_id
        client = await self._open()
        start = time.perf_counter()
        with self._errors():
            output = await client.chat_completion(
                messages=[{"role": "user", "content": prompt}],
                model=model,
                max_tokens=max_new_tokens,
                temperature=0.0,
            )
        latency = time.perf_counter() - start
        if not output.choices:
            raise EngineError(f"{self.name}: the answer has no choices")
        usage = output.usage
        return Generation(
            output.choices[0].message.content or "",
            usage.prompt_tokens if usage else None,
            usage.completion_tokens if usage else None,
            latency,
        )

    async def info(self) -> EngineInfo:
        # The endpoint may be given with or without the /v1 suffix.
        path = "/models" if self._endpoint.endswith("/v1") else "/v1/models"
        listing = await self._get_json(path, missing_ok=True)
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
        # vLLM and SGLang report the context length as max_model_len; others say nothing.
        return EngineInfo(self._model, None, chosen.get("max_model_len"))


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
