"""The local engine server (`quasar engine serve`) over real HTTP on 127.0.0.1, through the same TGI client
the miner uses (evaluation.engines.make_engine("tgi", ...)), on the tiny model."""

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import huggingface_hub.constants
import pytest
from huggingface_hub import AsyncInferenceClient, InferenceClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evaluation.dev_engine.server import RunningEngineServer, main, start_engine_server
from evaluation.engines import EngineError, EngineInfo, Generation, make_engine
from evaluation.local_model import ensure_local_model
from quasar_cli import main as quasar_main

T = TypeVar("T")
MAX_INPUT_TOKENS = 3000
MAX_TOTAL_TOKENS = 4096
PAYLOAD_LIMIT = 1_000_000
PROMPT = "Below is a long text with some special facts hidden in it.\n\nQuestion: what is the key?\nAnswer:"


class HostedServer:
    """The engine server on an event loop of its own, in a thread: each test drives it with asyncio.run,
    as the neurons' own clients would from another process."""

    def __init__(
        self, model: Path, max_input_tokens: int = MAX_INPUT_TOKENS, max_total_tokens: int = MAX_TOTAL_TOKENS
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="engine-server", daemon=True)
        self._thread.start()
        start = start_engine_server(
            str(model),
            max_input_tokens=max_input_tokens,
            max_total_tokens=max_total_tokens,
            payload_limit=PAYLOAD_LIMIT,
            shutdown_timeout_s=1.0,
        )
        self.running: RunningEngineServer = asyncio.run_coroutine_threadsafe(start, self._loop).result(60)
        self.url = self.running.url

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.running.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="session")
def local_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The session cache the other test modules use: the tiny model is built once per run.
    return ensure_local_model(tmp_path_factory.getbasetemp() / "quasar-cache" / "local-model-v1")


@pytest.fixture(scope="module")
def server(local_model: Path) -> Iterator[HostedServer]:
    hosted = HostedServer(local_model)
    yield hosted
    hosted.close()


def with_engine(server: HostedServer, use: Callable[[Any], Awaitable[T]], timeout_s: float = 30.0) -> T:
    async def run() -> T:
        engine = make_engine("tgi", server.url, None, timeout_s)
        try:
            return await use(engine)
        finally:
            await engine.aclose()

    return asyncio.run(run())


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_generate_matches_the_in_process_local_engine(server: HostedServer, local_model: Path) -> None:
    served: Generation = with_engine(server, lambda e: e.generate(PROMPT, 8))
    again: Generation = with_engine(server, lambda e: e.generate(PROMPT, 8))
    local = make_engine("local", None, str(local_model), 60.0)
    in_process = asyncio.run(local.generate(PROMPT, 8))
    assert served.text == again.text == in_process.text  # greedy, and the same model path
    assert served.completion_tokens == in_process.completion_tokens
    assert served.completion_tokens is not None
    assert 1 <= served.completion_tokens <= 8


def test_generate_answers_in_tgi_shapes(server: HostedServer) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 5, "details": True, "do_sample": False}}
    answer = httpx2.post(server.url + "/generate", json=body, timeout=30)
    listed = httpx2.post(server.url + "/", json=body, timeout=30)
    assert answer.status_code == listed.status_code == 200
    result = answer.json()
    assert listed.json() == [result]  # TGI answers a one-element list at /
    details = result["details"]
    assert details["finish_reason"] in ("length", "eos_token")
    assert details["generated_tokens"] == len(details["tokens"]) <= 5
    assert (
        "".join(token["text"] for token in details["tokens"] if not token["special"])
        == (result["generated_text"])
    )
    assert int(answer.headers["x-generated-tokens"]) == details["generated_tokens"]
    assert int(answer.headers["x-prompt-tokens"]) > 10


def test_info_reports_the_limits(server: HostedServer, local_model: Path) -> None:
    info = with_engine(server, lambda e: e.info())
    assert info == EngineInfo(str(local_model), MAX_INPUT_TOKENS, MAX_TOTAL_TOKENS)


def test_prompts_over_the_limits_are_refused_with_the_numbers(server: HostedServer) -> None:
    too_long = "the" + " the" * MAX_INPUT_TOKENS  # one token per word
    given = MAX_INPUT_TOKENS + 1
    with pytest.raises(
        EngineError, match=rf"HTTP 422: .*less than {MAX_INPUT_TOKENS} tokens. Given: {given}"
    ):
        with_engine(server, lambda e: e.generate(too_long, 8))
    expected = (
        rf"HTTP 422: .*must be <= {MAX_TOTAL_TOKENS}. Given: \d+ `inputs` tokens and 2000 `max_new_tokens`"
    )
    with pytest.raises(EngineError, match=expected):
        with_engine(server, lambda e: e.generate("the" + " the" * 2500, 2000))


def test_bad_requests_get_tgi_errors(server: HostedServer) -> None:
    sampled = {"inputs": PROMPT, "parameters": {"do_sample": True}}
    answer = httpx2.post(server.url + "/generate", json=sampled, timeout=30)
    assert answer.status_code == 422
    assert answer.json()["error_type"] == "validation"
    assert "decodes greedily" in answer.json()["error"]
    empty = httpx2.post(server.url + "/generate", json={"inputs": ""}, timeout=30)
    assert empty.json() == {
        "error": "Input validation error: `inputs` cannot be empty",
        "error_type": "validation",
    }
    huge = {"inputs": "x" * PAYLOAD_LIMIT}
    assert httpx2.post(server.url + "/generate", json=huge, timeout=30).status_code == 413


def test_generate_stream_sends_one_event_per_token(server: HostedServer) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 6, "details": True}}
    answer = httpx2.post(server.url + "/generate_stream", json=body, timeout=30)
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = [line for line in answer.text.split("\n\n") if line.startswith("data:")]
    assert 1 <= len(events) <= 6
    whole = httpx2.post(server.url + "/generate", json=body, timeout=30).json()
    last = httpx2.Response(200, content=events[-1].removeprefix("data:")).json()
    assert last["generated_text"] == whole["generated_text"]
    assert last["details"]["generated_tokens"] == len(events)


def test_the_tgi_client_streams_tokens(server: HostedServer) -> None:
    async def stream() -> list[Any]:
        # What a miner streaming through huggingface_hub does: POST / with "stream": true.
        client = AsyncInferenceClient(base_url=server.url)
        async with httpx2.AsyncClient() as session:  # not the library's session: HF_HUB_OFFLINE blocks it
            client._async_client = session
            outputs = await client.text_generation(PROMPT, max_new_tokens=5, details=True, stream=True)
            return [output async for output in outputs]

    outputs = asyncio.run(stream())
    assert outputs
    assert outputs[-1].generated_text == "".join(o.token.text for o in outputs if not o.token.special)
    assert outputs[-1].details is not None
    assert outputs[-1].details.generated_tokens == len(outputs)


def test_requests_wait_in_a_queue_while_health_and_metrics_answer(server: HostedServer) -> None:
    async def scenario() -> tuple[float, float, list[Generation]]:
        engine = make_engine("tgi", server.url, None, 60.0)
        prompt = "the" + " the" * 1500
        calls = [asyncio.create_task(engine.generate(prompt, 128)) for _ in range(2)]
        most_queued, slowest_health = 0.0, 0.0
        async with httpx2.AsyncClient(base_url=server.url) as client:
            while not all(call.done() for call in calls):
                start = time.perf_counter()
                assert (await client.get("/health")).status_code == 200
                slowest_health = max(slowest_health, time.perf_counter() - start)
                metrics = (await client.get("/metrics")).text
                most_queued = max(most_queued, metric(metrics, "tgi_queue_size"))
                await asyncio.sleep(0.01)
            assert metric((await client.get("/metrics")).text, "tgi_queue_size") == 0
        results = [await call for call in calls]
        await engine.aclose()
        return most_queued, slowest_health, results

    most_queued, slowest_health, results = asyncio.run(scenario())
    assert most_queued >= 1
    assert slowest_health < 1.0
    assert len({result.text for result in results}) == 1


def test_an_abandoned_request_frees_the_model(server: HostedServer) -> None:
    with pytest.raises(EngineError, match="timeout"):
        with_engine(server, lambda e: e.generate("the" + " the" * 2000, 2000), timeout_s=0.3)
    start = time.perf_counter()
    quick: Generation = with_engine(server, lambda e: e.generate(PROMPT, 2))
    assert quick.completion_tokens is not None
    assert time.perf_counter() - start < 5.0  # not behind the abandoned 2000-token generation
    metrics = httpx2.get(server.url + "/metrics", timeout=30).text
    assert metric(metrics, "tgi_batch_current_size") == 0
    assert metric(metrics, "tgi_queue_size") == 0


def test_the_serve_command_runs_until_sigterm(local_model: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-c",
        "import sys; from evaluation.dev_engine.server import main; sys.exit(main(sys.argv[1:], 'engine'))",
    ]
    args = ["serve", "--model", str(local_model), "--port", str(port), "--max-total-tokens", "2048"]
    process = subprocess.Popen(command + args, cwd=Path(__file__).parents[1], env=os.environ.copy())
    try:
        info = _wait_for(f"http://127.0.0.1:{port}/info", process)
        assert (info["max_input_tokens"], info["max_total_tokens"]) == (2047, 2048)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        process.kill()
        process.wait(30)


def _wait_for(url: str, process: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            return httpx2.get(url, timeout=5).json()
        except httpx2.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer")


def test_bad_flags_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["serve", "--max-total-tokens", "0"], "quasar engine")
    assert exit.value.code == 2
    assert "must be positive" in capsys.readouterr().err


def test_inconsistent_limits_are_an_error(local_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    limits = ["--max-input-tokens", "10", "--max-total-tokens", "10"]
    assert main(["serve", "--model", str(local_model), "--port", "0", *limits], "quasar engine") == 1
    assert "max input tokens (10) must be < max total tokens (10)" in capsys.readouterr().err


def test_a_stream_left_early_frees_the_model(server: HostedServer) -> None:
    async def leave_early() -> None:
        body = {"inputs": "the" + " the" * 2000, "parameters": {"max_new_tokens": 2000}}
        async with (
            httpx2.AsyncClient(base_url=server.url, timeout=30) as client,
            client.stream("POST", "/generate_stream", json=body) as events,
        ):
            async for line in events.aiter_lines():
                if line.startswith("data:"):
                    return  # hang up after the first token

    asyncio.run(leave_early())
    start = time.perf_counter()
    with_engine(server, lambda e: e.generate(PROMPT, 2))
    assert time.perf_counter() - start < 5.0


def test_too_many_requests_in_flight_are_refused(
    server: HostedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("evaluation.dev_engine.model.MAX_CONCURRENT_REQUESTS", 1)

    async def two_at_once() -> list[int]:
        async with httpx2.AsyncClient(base_url=server.url, timeout=30) as client:
            long = {"inputs": "the" + " the" * 1000, "parameters": {"max_new_tokens": 200}}
            first = asyncio.create_task(client.post("/generate", json=long))
            while metric((await client.get("/metrics")).text, "tgi_batch_current_size") == 0:
                await asyncio.sleep(0.005)
            second = await client.post("/generate", json={"inputs": PROMPT})
            assert second.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
            return [(await first).status_code, second.status_code]

    assert asyncio.run(two_at_once()) == [200, 429]


def test_stopping_lets_the_running_request_finish(local_model: Path) -> None:
    async def scenario() -> tuple[int, bool]:
        # A shutdown timeout the running request finishes well within, however busy the machine.
        running = await start_engine_server(str(local_model), max_total_tokens=4096, shutdown_timeout_s=120)
        async with httpx2.AsyncClient(base_url=running.url, timeout=120) as client:
            body = {"inputs": "the" + " the" * 1000, "parameters": {"max_new_tokens": 200}}
            answer = asyncio.create_task(client.post("/generate", json=body))
            while metric((await client.get("/metrics")).text, "tgi_batch_current_size") == 0:
                await asyncio.sleep(0.005)
            await running.stop()
            refused = False
            try:
                await client.get("/health")
            except httpx2.TransportError:
                refused = True  # no longer listening
            return (await answer).status_code, refused

    assert asyncio.run(scenario()) == (200, True)


def test_truncate_keeps_the_end_of_the_prompt_and_full_text_prepends_it(server: HostedServer) -> None:
    long = "the" + " the" * (MAX_INPUT_TOKENS + 500) + " key"
    body = {"inputs": long, "parameters": {"max_new_tokens": 2, "truncate": 100}}
    answer = httpx2.post(server.url + "/generate", json=body, timeout=30)
    assert answer.status_code == 200
    assert answer.headers["x-prompt-tokens"] == "100"
    full = {"inputs": PROMPT, "parameters": {"max_new_tokens": 2, "return_full_text": True}}
    assert (
        httpx2.post(server.url + "/generate", json=full, timeout=30)
        .json()["generated_text"]
        .startswith(PROMPT)
    )


# --- hostile input: every client mistake gets a 4xx naming what was wrong, never a 5xx

_NESTED_TOO_DEEP_FOR_THE_DECODER = b'{"inputs": "x", "parameters": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
_NESTED_PAST_THE_LIMIT = b'{"inputs": "x", "parameters": {"stop": ' + b"[" * 40 + b"]" * 40 + b"}}"
HOSTILE_BODIES: list[tuple[bytes, int, str]] = [
    # (raw body, status, what the message must name)
    (
        rb'{"inputs": "a lone \ud800 surrogate"}',
        400,
        "`inputs` is not valid Unicode: a lone surrogate (\\ud800)",
    ),
    (rb'{"inputs": "x", "\udc00": 1}', 400, "a key in `body` is not valid Unicode"),
    (
        rb'{"inputs": "x", "parameters": {"stop": ["\udbff"]}}',
        400,
        "`parameters.stop[0]` is not valid Unicode",
    ),
    (_NESTED_TOO_DEEP_FOR_THE_DECODER, 400, "nests deeper than 32 levels"),
    (_NESTED_PAST_THE_LIMIT, 400, "`parameters.stop" + "[0]" * 30 + "` nests deeper than 32 levels"),
    (
        b'{"inputs": "x", "parameters": {"max_new_tokens": 1' + b"0" * 30 + b"}}",
        422,
        "`parameters.max_new_tokens` is out of range",
    ),
    (
        b'{"inputs": "x", "parameters": {"truncate": -1' + b"0" * 30 + b"}}",
        422,
        "`parameters.truncate` is out of range",
    ),
    (
        b'{"inputs": "x", "parameters": {"temperature": 1e400}}',
        422,
        "`parameters.temperature` is out of range",
    ),
    (b'{"inputs": "x", "parameters": {"max_new_tokens": ' + b"9" * 5000 + b"}}", 400, "Failed to parse"),
    (b'{"inputs": "x", "parameters": {"temperature": NaN}}', 400, "NaN is not a JSON number"),
    (b'{"inputs": 5}', 422, "`inputs` must be a string"),
    (b'{"inputs": "x", "parameters": "fast"}', 422, "`parameters` must be an object"),
    (b'{"inputs": "x", "parameters": {"max_new_tokens": "5"}}', 422, "`max_new_tokens` must be an integer"),
    (b'{"inputs": "x", "parameters": {"truncate": 1.5}}', 422, "`truncate` must be an integer"),
    (b'{"inputs": "x", "parameters": {"max_new_tokens": true}}', 422, "`max_new_tokens` must be an integer"),
    (b'{"inputs": "x", "parameters": {"stop": [' + b'"x", ' * 5000 + b'"x"]}}', 422, "`stop` = ['x', 'x'"),
    (b"[1, 2]", 422, "must be a JSON object"),
    (b"\xff\xfe{", 400, "Failed to parse"),
]


@pytest.mark.parametrize("path", ["/generate", "/"])
@pytest.mark.parametrize(("raw", "status", "named"), HOSTILE_BODIES)
def test_hostile_bodies_get_a_4xx_naming_the_field(
    server: HostedServer, path: str, raw: bytes, status: int, named: str
) -> None:
    answer = httpx2.post(
        server.url + path, content=raw, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert error["error_type"] == "validation"
    assert named in error["error"]
    assert len(error["error"]) < 300  # a megabyte value is not echoed back


def test_hostile_bodies_to_the_stream_get_a_4xx_or_an_error_event(server: HostedServer) -> None:
    for raw, status, named in HOSTILE_BODIES:
        answer = httpx2.post(server.url + "/generate_stream", content=raw, timeout=30)
        if answer.status_code == 200:  # a field's type is checked once streaming began, as TGI does
            assert named in answer.text
        else:
            assert answer.status_code == status
            assert named in answer.json()["error"]


@pytest.fixture(scope="module")
def small_server(chat_model: Path) -> Iterator[HostedServer]:
    """A server whose context is 48 tokens, so a random body that happens to be valid generates quickly;
    its model has a chat template, so random chats reach the model too."""
    hosted = HostedServer(chat_model, max_input_tokens=40, max_total_tokens=48)
    yield hosted
    hosted.close()


# Any character, lone surrogates included (JSON's \u escapes can spell them).
_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)
_FIELDS = st.sampled_from(
    [
        *("inputs", "parameters", "stream", "max_new_tokens", "truncate", "details", "stop", "temperature"),
        *("prompt", "messages", "role", "content", "max_tokens", "stream_options", "include_usage", "n"),
    ]
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and infinities are written as JSON's non-standard literals
    | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_FIELDS | _TEXT, inner, max_size=3),
    max_leaves=12,
)
_BODIES = st.one_of(
    st.dictionaries(_FIELDS, _JSON, max_size=4).map(lambda body: json.dumps(body).encode()),
    _JSON.map(lambda body: json.dumps(body).encode()),
    st.binary(max_size=64),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(["/generate", "/", "/generate_stream", "/v1/completions", "/v1/chat/completions"]),
    raw=_BODIES,
)
def test_no_body_gets_a_5xx(small_server: HostedServer, path: str, raw: bytes) -> None:
    answer = httpx2.post(small_server.url + path, content=raw, timeout=30)
    assert answer.status_code < 500, answer.text
    if answer.status_code >= 400 and answer.status_code != 413:
        assert answer.json()["error"]  # a JSON error saying what was wrong


def test_a_refused_body_is_not_read_and_its_connection_closes(server: HostedServer) -> None:
    """Through evaluation.http_guard: a 413 for a declared 10 GiB body closes the connection at once, though
    the client keeps sending (aiohttp alone would go on reading it for 10 s)."""
    host, port = server.url.removeprefix("http://").split(":")
    head = b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: %d\r\n\r\n" % (10 * 2**30)
    before = server.running.site.stats.bytes_received
    with socket.create_connection((host, int(port)), timeout=30) as client:
        client.sendall(head)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 413")
        assert _sent_until_refused(client, 64 * 2**20)  # the server hung up: it reads no more of it
    read = server.running.site.stats.bytes_received - before
    assert read < 256 * 1024  # the head, the first chunks, nothing of the rest


def _sent_until_refused(client: socket.socket, most: int) -> bool:
    """Whether the peer refuses the data (the connection reset) before `most` bytes were sent."""
    try:
        for _ in range(most // 65536):
            client.sendall(b"x" * 65536)
    except OSError:
        return True
    return False


# --- the OpenAI API

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CHAT_MAX_TOTAL_TOKENS = 40_000  # room for `quasar eval run`'s 32k bucket


@pytest.fixture(scope="module")
def chat_model(local_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as an instruct model: the same weights, a chat template in its tokenizer config."""
    folder = tmp_path_factory.mktemp("chat-model") / "model"
    shutil.copytree(local_model, folder)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps(config | {"chat_template": CHAT_TEMPLATE}))
    return folder


@pytest.fixture(scope="module")
def chat_server(chat_model: Path) -> Iterator[HostedServer]:
    hosted = HostedServer(
        chat_model, max_input_tokens=CHAT_MAX_TOTAL_TOKENS - 1, max_total_tokens=CHAT_MAX_TOTAL_TOKENS
    )
    yield hosted
    hosted.close()


def _post(server: HostedServer, path: str, body: dict[str, Any]) -> Any:
    answer = httpx2.post(server.url + path, json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _sse(server: HostedServer, path: str, body: dict[str, Any]) -> list[Any]:
    """The events of a stream, which must end with `data: [DONE]`."""
    answer = httpx2.post(server.url + path, json=body | {"stream": True}, timeout=60)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in answer.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


def test_models_lists_the_model_with_its_context_as_vllm_does(
    server: HostedServer, local_model: Path
) -> None:
    listing = httpx2.get(server.url + "/v1/models", timeout=30).json()
    assert listing["object"] == "list"
    assert [(card["id"], card["max_model_len"]) for card in listing["data"]] == [
        (str(local_model), MAX_TOTAL_TOKENS)
    ]
    # The project's own OpenAI client learns the model and its limit from it.
    engine = make_engine("openai", server.url, None, 30.0)
    assert asyncio.run(_info_and_close(engine)) == EngineInfo(str(local_model), None, MAX_TOTAL_TOKENS)


async def _info_and_close(engine: Any) -> EngineInfo:
    try:
        info: EngineInfo = await engine.info()
        return info
    finally:
        await engine.aclose()


def test_a_completion_is_the_tgi_generation(server: HostedServer) -> None:
    tgi = httpx2.post(
        server.url + "/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 8}}, timeout=30
    )
    completion = _post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 8})
    assert completion["object"] == "text_completion"
    assert completion["id"].startswith("cmpl-")
    [choice] = completion["choices"]
    assert choice["text"] == tgi.json()["generated_text"]  # the same greedy path
    assert choice["finish_reason"] in ("stop", "length")
    usage = completion["usage"]
    assert usage["prompt_tokens"] == int(tgi.headers["x-prompt-tokens"])
    assert usage["completion_tokens"] == int(tgi.headers["x-generated-tokens"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert (completion["decoding"], completion["ignored_parameters"]) == ("greedy", [])


def test_a_streamed_completion_adds_up_to_the_whole_one(server: HostedServer) -> None:
    body = {"prompt": PROMPT, "max_tokens": 8, "stream_options": {"include_usage": True}}
    whole = _post(server, "/v1/completions", body)
    chunks = _sse(server, "/v1/completions", body)
    *texts, usage = chunks
    assert "".join(chunk["choices"][0]["text"] for chunk in texts) == whole["choices"][0]["text"]
    assert texts[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in texts[:-1])
    assert (usage["choices"], usage["usage"]) == ([], whole["usage"])


def test_stop_sequences_end_the_text_before_them_streamed_or_not(server: HostedServer) -> None:
    prompt = "The history of the river"  # the tiny model goes on " river river ... any any"
    unstopped = _post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 12})["choices"][0]["text"]
    stop = unstopped.split()[-1]  # the last word, first seen after the start
    body = {"prompt": prompt, "max_tokens": 12, "stop": ["never in the text", stop]}
    stopped = _post(server, "/v1/completions", body)["choices"][0]
    assert stopped["text"] == unstopped[: unstopped.index(stop)]
    assert stopped["text"]
    assert (stopped["finish_reason"], stopped["stop_reason"]) == ("stop", stop)
    streamed = "".join(chunk["choices"][0]["text"] for chunk in _sse(server, "/v1/completions", body))
    assert streamed == stopped["text"]


def test_sampling_parameters_are_accepted_and_said_to_be_ignored(server: HostedServer) -> None:
    greedy = _post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 6})
    sampled = _post(
        server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 6, "temperature": 0.7, "top_p": 1.0}
    )
    assert sampled["choices"][0]["text"] == greedy["choices"][0]["text"]
    assert (sampled["decoding"], sampled["ignored_parameters"]) == ("greedy", ["temperature"])


def test_chat_on_a_base_model_points_to_completions(server: HostedServer) -> None:
    answer = httpx2.post(
        server.url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("BadRequestError", "messages", 400)
    assert "no chat template" in error["message"]
    assert "/v1/completions" in error["message"]


OPENAI_MISTAKES: list[tuple[str, dict[str, Any], str]] = [
    # (path, body, the param the error names)
    ("/v1/completions", {"prompt": 5}, "prompt"),
    ("/v1/completions", {"prompt": ""}, "prompt"),
    ("/v1/completions", {"prompt": ["a", "b"]}, "prompt"),
    ("/v1/completions", {"prompt": PROMPT, "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": PROMPT, "max_tokens": MAX_TOTAL_TOKENS}, "max_tokens"),
    ("/v1/completions", {"prompt": "the" + " the" * MAX_INPUT_TOKENS}, "input_tokens"),
    ("/v1/completions", {"prompt": PROMPT, "temperature": 5}, "temperature"),
    ("/v1/completions", {"prompt": PROMPT, "temperature": "hot"}, "temperature"),
    ("/v1/completions", {"prompt": PROMPT, "stop": [""]}, "stop"),
    ("/v1/completions", {"prompt": PROMPT, "stop": 3}, "stop"),
    ("/v1/completions", {"prompt": PROMPT, "stream": "yes"}, "stream"),
    ("/v1/completions", {"prompt": PROMPT, "stream_options": []}, "stream_options"),
    ("/v1/completions", {"prompt": PROMPT, "n": 2}, "n"),
    ("/v1/completions", {"prompt": PROMPT, "logprobs": 3}, "logprobs"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "king", "content": "x"}]}, "messages[0].role"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        "messages[0].content",
    ),
]


@pytest.mark.parametrize(("path", "body", "param"), OPENAI_MISTAKES)
def test_openai_mistakes_get_a_400_in_openais_shape_naming_the_param(
    request: pytest.FixtureRequest, path: str, body: dict[str, Any], param: str
) -> None:
    # The chat mistakes go to the model with a template, so the message checks are what refuses them.
    hosted: HostedServer = request.getfixturevalue("chat_server" if "chat" in path else "server")
    answer = httpx2.post(hosted.url + path, json=body, timeout=30)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("BadRequestError", param, 400)


@pytest.mark.parametrize(("raw", "status", "named"), HOSTILE_BODIES[:10])
def test_hostile_bodies_to_the_openai_api_get_a_400_naming_the_field(
    server: HostedServer, raw: bytes, status: int, named: str
) -> None:
    answer = httpx2.post(server.url + "/v1/completions", content=raw, timeout=30)
    assert answer.status_code == 400
    assert named in answer.json()["error"]["message"]


def test_huggingface_hubs_clients_chat_with_it_unchanged(
    chat_server: HostedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The suite runs with HF_HUB_OFFLINE, which makes the library's own session refuse every request;
    # a user's environment does not, and the clients are used here as a user would use them.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    whole = InferenceClient(base_url=chat_server.url).chat_completion(messages, max_tokens=8, temperature=0)
    answer = whole.choices[0].message.content
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage.completion_tokens >= 1

    async def streamed() -> str:
        client = AsyncInferenceClient(base_url=chat_server.url)
        chunks = await client.chat_completion(messages, max_tokens=8, temperature=0, stream=True)
        return "".join([chunk.choices[0].delta.content or "" async for chunk in chunks if chunk.choices])

    assert asyncio.run(streamed()) == answer
    # The project's own OpenAI client (eval run's --engine openai) gets the same answer.
    engine = make_engine("openai", chat_server.url, None, 60.0)
    prompt_only = [{"role": "user", "content": PROMPT}]
    direct = InferenceClient(base_url=chat_server.url).chat_completion(prompt_only, max_tokens=8)
    generation: Generation = asyncio.run(_generate_and_close(engine, PROMPT, 8))
    assert generation.text == direct.choices[0].message.content


async def _generate_and_close(engine: Any, prompt: str, max_new_tokens: int) -> Generation:
    try:
        generation: Generation = await engine.generate(prompt, max_new_tokens)
        return generation
    finally:
        await engine.aclose()


def test_eval_run_with_the_openai_engine_works_against_it(chat_server: HostedServer, tmp_path: Path) -> None:
    output = tmp_path / "out.json"
    args = ["eval", "run", "--engine", "openai", "--endpoint", chat_server.url, "--tasks", "niah_single"]
    assert quasar_main([*args, "--samples", "1", "--output", str(output)]) == 0
    [result] = json.loads(output.read_text())["results"]
    assert isinstance(result["prediction"], str)
    assert not result.get("error")


def test_serve_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"], "quasar engine")
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for default in ("(default: tiny)", "(default: 127.0.0.1)", "(default: 8080)", "(default: 90.0)"):
        assert default in shown
