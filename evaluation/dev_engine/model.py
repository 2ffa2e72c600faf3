"""The model side of the development engine: a transformers model, its one-at-a-time queue and TGI's
Prometheus metrics, shared by both HTTP APIs (tgi.py, openai_api.py).

Generation runs in a worker thread, one request at a time in arrival order, greedily; each token is handed
over as it is chosen (for streaming) with its log probability. A request whose client went away is told to
stop at the next token, and the next request waits until it has.
"""

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import Metric, UnknownMetricFamily
from prometheus_client.registry import Collector

from evaluation.engines import LoadedModel

MAX_CONCURRENT_REQUESTS = 128  # TGI's default: more requests waiting or running get a 429
# TGI's finish reasons; the OpenAI API maps them to its own.
FinishReason = str  # "length", "eos_token" or "stop_sequence"


class OverloadedError(Exception):
    """More requests in flight than MAX_CONCURRENT_REQUESTS: TGI answers 429."""


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
    details: bool = False
    return_full_text: bool = False
    stop: tuple[str, ...] = ()  # generation ends at the first of these; the text ends before it


@dataclass(frozen=True)
class Outcome:
    tokens: list[Token]
    text: str  # the generated text without special tokens (and with the prompt if return_full_text)
    finish_reason: FinishReason
    queue_s: float
    inference_s: float
    stop_sequence: str | None = None  # the one of Job.stop that ended the text


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
        self.text = ""  # the text of the tokens so far, special tokens left out
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
            if not token.special:
                self.text += token.text
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


class _StopWhen:
    """Stopping criterion: ends decoding once the request is abandoned (client gone, server stopping) or the
    generated text (not the prompt: vLLM's rule) contains one of the stop sequences."""

    def __init__(self, cancel: threading.Event, recorder: _TokenRecorder, stop: tuple[str, ...]) -> None:
        self._cancel = cancel
        self._recorder = recorder
        self._stop = stop
        # Only the end of the text is searched: a token adds a few characters, never hundreds.
        self._window = max((len(sequence) for sequence in stop), default=0) + 256

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        text = self._recorder.text[-self._window :]
        done = self._cancel.is_set() or any(sequence in text for sequence in self._stop)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class Generator:
    """The model side, called from worker threads: tokenising, the chat template and greedy generation."""

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
        self.has_chat_template = bool(getattr(loaded.tokenizer, "chat_template", None))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # Special tokens (a BOS) as TGI adds them; the Rust encoder has no max-length warning.
        ids: list[int] = self._tokenizer.backend_tokenizer.encode(
            text, add_special_tokens=add_special_tokens
        ).ids
        return ids

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The conversation through the model's chat template, ending with the assistant's turn opened.
        Raises the template's own error (jinja2's TemplateError) for a conversation it refuses."""
        text: str = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text

    def generate(
        self, job: Job, on_token: Callable[[Token], None], cancel: threading.Event
    ) -> tuple[list[Token], str, FinishReason, str | None]:
        """Tokens, generated text, finish reason and the stop sequence that ended it (if one did)."""
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
                stopping_criteria=StoppingCriteriaList([_StopWhen(cancel, recorder, job.stop)]),
                streamer=recorder,
            )
        text = self._tokenizer.decode(recorder.ids, skip_special_tokens=True)
        cut = cut_at_stop(text, job.stop)
        if cut is not None:
            return recorder.tokens, text[: cut[0]], "stop_sequence", cut[1]
        finish_reason = "eos_token" if recorder.ids and recorder.ids[-1] in self._eos_ids else "length"
        return recorder.tokens, text, finish_reason, None


def cut_at_stop(text: str, stop: Iterable[str]) -> tuple[int, str] | None:
    """Where the first stop sequence in `text` begins, and which it is; None when there is none."""
    found = [(text.find(sequence), sequence) for sequence in stop if sequence in text]
    return min(found) if found else None


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


class Metrics:
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


class ServedModel:
    """The model as served: its name and limits, the queue in front of it and its metrics."""

    def __init__(
        self, generator: Generator, model_id: str, max_input_tokens: int, max_total_tokens: int
    ) -> None:
        self.generator = generator
        self.model_id = model_id
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        self.metrics = Metrics(max_input_tokens, max_total_tokens)
        self._turn = asyncio.Lock()  # one generation at a time; asyncio.Lock wakes waiters in order
        self._waiting = 0

    async def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # A long prompt takes a while to tokenise: off the event loop.
        return await asyncio.to_thread(self.generator.encode, text, add_special_tokens)

    def observe_request(self, ids: list[int], max_new_tokens: int) -> None:
        self.metrics.input_length.observe(len(ids))
        self.metrics.max_new_tokens.observe(max_new_tokens)

    def failed(self, err: str) -> None:
        """Counts a failure under TGI's `err` label (validation, payload, overloaded, generation)."""
        self.metrics.counts.failures[err] += 1

    async def stream(self, job: Job) -> AsyncGenerator[Token | Outcome, None]:
        """The tokens of one generation as they come, then its Outcome; raises OverloadedError or the
        model's failure. Closing the generator early (a client gone) stops the generation."""
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue[Token | None] = asyncio.Queue()

        def on_token(token: Token) -> None:  # called from the generating thread
            loop.call_soon_threadsafe(tokens.put_nowait, token)

        work = asyncio.ensure_future(self.run(job, on_token))
        # Token callbacks are queued on the loop before the thread's completion, so None comes last.
        work.add_done_callback(lambda _: tokens.put_nowait(None))
        try:
            while (token := await tokens.get()) is not None:
                yield token
            yield work.result()
        finally:
            if not work.done():  # the client went away: stop the generation and free the model
                work.cancel()
                await asyncio.wait({work})

    async def run(self, job: Job, on_token: Callable[[Token], None] | None = None) -> Outcome:
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
            tokens, text, finish_reason, stop = await self._in_thread(job, on_token or (lambda token: None))
        finally:
            self.metrics.batch_size.set(0)
            self.metrics.batch_max_tokens.set(0)
            self._turn.release()
        if job.return_full_text:
            text = job.inputs + text
        now = time.perf_counter()
        return Outcome(tokens, text, finish_reason, started - queued, now - started, stop)

    async def _in_thread(
        self, job: Job, on_token: Callable[[Token], None]
    ) -> tuple[list[Token], str, FinishReason, str | None]:
        cancel = threading.Event()
        work = asyncio.ensure_future(asyncio.to_thread(self.generator.generate, job, on_token, cancel))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # The caller gave up; the thread cannot be killed, so tell it to stop and keep the model's
            # turn until it has, or the next request would run alongside it.
            cancel.set()
            await asyncio.wait({work})
            raise

    def succeeded(self, outcome: Outcome, start: float) -> float:
        total_s = time.perf_counter() - start
        metrics = self.metrics
        metrics.counts.successes += 1
        metrics.duration.observe(total_s)
        metrics.queue_duration.observe(outcome.queue_s)
        metrics.inference_duration.observe(outcome.inference_s)
        metrics.generated_tokens.observe(len(outcome.tokens))
        return total_s
