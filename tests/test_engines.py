"""Engine clients over real HTTP against tests/fake_tgi.py, and the local engine on the tiny model.

The suite runs with HF_HUB_OFFLINE=1 (conftest), under which huggingface_hub's own HTTP session refuses
every request: these tests also show that engine requests are not blocked by it.
"""

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from evaluation.engines import Engine, EngineError, EngineFailure, EngineInfo, Generation, make_engine
from evaluation.errors import InputError
from evaluation.local_model import LOCAL_MAX_TOTAL_TOKENS, ensure_local_model
from evaluation.tokenizer import load_tokenizer
from tests.fake_openai_engines import FakeOpenAIEngine, FakeSGLang, FakeVLLM, sglang_error, vllm_error
from tests.fake_server import Failure
from tests.fake_tgi import FakeTGI, tgi_validation_error

T = TypeVar("T")


def call(engine: Engine, use: Callable[[Engine], Awaitable[T]]) -> T:
    """Run one use of the engine in a fresh event loop, closing the engine afterwards."""

    async def run() -> T:
        try:
            return await use(engine)
        finally:
            await engine.aclose()

    return asyncio.run(run())


def generate(engine: Engine, prompt: str = "What is 6 times 7?", max_new_tokens: int = 16) -> Generation:
    return call(engine, lambda e: e.generate(prompt, max_new_tokens))


@pytest.fixture
def server() -> Iterator[FakeTGI]:
    with FakeTGI(answer="The answer is 42") as fake:
        yield fake


def test_tgi_generates_greedily_with_token_counts(server: FakeTGI) -> None:
    result = generate(make_engine("tgi", server.url, None, 30.0), max_new_tokens=16)
    assert result.text == "The answer is 42"
    assert result.completion_tokens == 4
    assert result.prompt_tokens is None  # TGI reports the prompt only as a full token list
    assert result.latency_s > 0
    [request] = server.requests
    assert request.path == "/"
    assert request.body["inputs"] == "What is 6 times 7?"
    assert request.body["parameters"]["max_new_tokens"] == 16
    assert request.body["parameters"]["details"] is True
    assert request.body["parameters"]["do_sample"] is False


def test_the_answer_can_depend_on_the_prompt(server: FakeTGI) -> None:
    server.answer = lambda prompt: prompt.upper()
    assert generate(make_engine("tgi", server.url, None, 30.0), "shout").text == "SHOUT"


def test_openai_generates_greedily_with_usage(server: FakeTGI) -> None:
    engine = make_engine("openai", server.url + "/v1", "served/name", 30.0)
    result = generate(engine, "one two three", max_new_tokens=8)
    assert result == Generation("The answer is 42", 3, 4, result.latency_s)
    [request] = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.body["model"] == "served/name"
    assert request.body["messages"] == [{"role": "user", "content": "one two three"}]
    assert request.body["max_tokens"] == 8
    assert request.body["temperature"] == 0


def test_openai_without_a_model_asks_the_server_which_it_serves(server: FakeTGI) -> None:
    generate(make_engine("openai", server.url, None, 30.0))
    assert [r.path for r in server.requests] == ["/v1/models", "/v1/chat/completions"]
    assert server.requests[1].body["model"] == "fake/model"


def test_tgi_info_reports_the_limits(server: FakeTGI) -> None:
    info = call(make_engine("tgi", server.url, None, 30.0), lambda e: e.info())
    assert info == EngineInfo("fake/model", 4095, 4096)
    assert info.fits(4000, 96)
    assert not info.fits(4000, 97)
    assert not info.fits(4096, 0)


def test_openai_info_reports_the_context_length(server: FakeTGI) -> None:
    info = call(make_engine("openai", server.url, None, 30.0), lambda e: e.info())
    assert info == EngineInfo("fake/model", None, 4096)


def test_openai_info_names_the_served_models_when_the_model_is_not_among_them(server: FakeTGI) -> None:
    with pytest.raises(EngineError, match=r"does not serve model 'other' \(it serves: 'fake/model'\)"):
        call(make_engine("openai", server.url, "other", 30.0), lambda e: e.info())


def test_openai_info_without_a_models_listing(server: FakeTGI) -> None:
    server.models_listing = False
    assert call(make_engine("openai", server.url, "m", 30.0), lambda e: e.info()) == EngineInfo(
        "m", None, None
    )
    with pytest.raises(EngineError, match="pass it"):
        call(make_engine("openai", server.url, None, 30.0), lambda e: e.info())


def test_a_server_that_is_down_fails_fast() -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for kind in ("tgi", "openai"):
        start = time.perf_counter()
        with pytest.raises(EngineError, match=f"{kind} http://127.0.0.1:{port}: cannot reach the engine"):
            generate(make_engine(kind, f"http://127.0.0.1:{port}", "m", 3600.0))
        assert time.perf_counter() - start < 5


def test_a_prompt_over_the_limits_fails_with_the_servers_numbers(server: FakeTGI) -> None:
    server.max_total_tokens = 10
    engine = make_engine("tgi", server.url, None, 30.0)
    with pytest.raises(EngineError, match=r"HTTP 422: Input validation error: .* must be <= 10\. Given: 5 "):
        generate(engine, "a b c d e", max_new_tokens=6)


def test_a_body_over_the_payload_limit_is_a_413_with_the_servers_message(server: FakeTGI) -> None:
    server.payload_limit = 1000
    with pytest.raises(
        EngineError, match="HTTP 413: Failed to buffer the request body: length limit exceeded"
    ):
        generate(make_engine("tgi", server.url, None, 30.0), "word " * 300)


def test_openai_errors_carry_the_status_and_message(server: FakeTGI) -> None:
    server.failures = [tgi_validation_error("too long"), Failure(500, "boom " * 200)]
    engine = make_engine("openai", server.url, "m", 30.0)
    with pytest.raises(EngineError, match="HTTP 422: Input validation error: too long"):
        generate(engine)
    with pytest.raises(EngineError, match=r"HTTP 500: boom boom .*…$") as caught:
        generate(engine)
    assert len(str(caught.value)) < 600  # a body excerpt, not the whole body


def test_a_slow_answer_is_a_timeout(server: FakeTGI) -> None:
    server.latency_s = 10.0
    for kind in ("tgi", "openai"):
        start = time.perf_counter()
        with pytest.raises(EngineError, match=r"no answer within 0\.3 s \(timeout\)"):
            generate(make_engine(kind, server.url, "m", 0.3))
        assert time.perf_counter() - start < 5


def test_the_hub_token_never_reaches_an_engine(server: FakeTGI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    generate(make_engine("tgi", server.url, None, 30.0))
    assert "authorization" not in {name.lower() for name in server.requests[-1].headers}
    monkeypatch.setenv("QUASAR_ENGINE_API_KEY", "engine-key")
    generate(make_engine("openai", server.url, "m", 30.0))
    assert server.requests[-1].headers["Authorization"] == "Bearer engine-key"


def test_bad_engine_arguments_are_input_errors() -> None:
    with pytest.raises(InputError, match="http"):
        make_engine("tgi", None, None, 30.0)
    with pytest.raises(InputError, match="http"):
        make_engine("openai", "localhost:8080", None, 30.0)
    with pytest.raises(InputError, match="no endpoint"):
        make_engine("local", "http://x", None, 30.0)
    with pytest.raises(InputError, match="positive"):
        make_engine("tgi", "http://x", None, 0)


@pytest.fixture(scope="session")
def local_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The session cache test_tokenizer.py also uses: the tiny model is built once per run.
    return ensure_local_model(tmp_path_factory.getbasetemp() / "quasar-cache" / "local-model-v1")


def test_the_local_engine_generates_greedily_with_token_counts(local_model: Path) -> None:
    prompt = (
        "Below is a long text with some special facts hidden in it.\n\nQuestion: what is the key?\nAnswer:"
    )
    engine = make_engine("local", None, str(local_model), 60.0)
    assert engine.name == f"local:{local_model}"
    first, second = generate(engine, prompt, 6), generate(engine, prompt, 6)
    assert first.text == second.text  # greedy
    assert first.prompt_tokens == load_tokenizer(str(local_model)).count(prompt)
    assert first.completion_tokens is not None
    assert 1 <= first.completion_tokens <= 6
    info = call(engine, lambda e: e.info())
    assert info == EngineInfo(str(local_model), None, LOCAL_MAX_TOTAL_TOKENS)


def test_the_local_engine_rejects_a_prompt_over_its_limit(local_model: Path) -> None:
    engine = make_engine("local", None, str(local_model), 60.0)
    too_long = "the" + " the" * (LOCAL_MAX_TOTAL_TOKENS - 3)  # one token per word
    limit = LOCAL_MAX_TOTAL_TOKENS
    expected = rf"prompt too long: {limit - 2} prompt tokens \+ 4 new tokens > {limit}, the most"
    with pytest.raises(EngineError, match=expected):
        generate(engine, too_long, 4)


def test_the_local_engine_times_out(local_model: Path) -> None:
    with pytest.raises(EngineError, match="timeout"):
        generate(make_engine("local", None, str(local_model), 0.001), "hello " * 2000, 64)


def test_an_unknown_local_model_offline_is_an_engine_error() -> None:
    with pytest.raises(EngineError, match=r"local:no-such/model: .*HF_HUB_OFFLINE"):
        generate(make_engine("local", None, "no-such/model", 30.0))


# ---------------------------------------------------------------------------------------------------------
# vLLM and SGLang through their OpenAI API, against tests/fake_openai_engines.py


@pytest.mark.parametrize(
    ("make", "limits"),
    [(FakeVLLM, EngineInfo("fake/model", 99, 100)), (FakeSGLang, EngineInfo("fake/model", 99, 99))],
)
def test_the_context_length_becomes_each_engines_own_limits(
    make: type[FakeOpenAIEngine], limits: EngineInfo
) -> None:
    """vLLM takes prompt + max_tokens up to max_model_len, SGLang below it; both a prompt below it. The
    limits the client reports agree with what the engine then accepts, around the edge."""
    with make(max_model_len=100) as engine:
        info = call(make_engine(make.kind, engine.url, None, 30.0), lambda e: e.info())
        assert info == limits
        for prompt_tokens in (98, 99, 100):
            for max_new_tokens in (1, 2):
                client = make_engine(make.kind, engine.url, None, 30.0, "completions")
                failure = failure_of(client, "w " * prompt_tokens, max_new_tokens)
                expected = None if info.fits(prompt_tokens, max_new_tokens) else "too_long"
                assert failure == expected, (prompt_tokens, max_new_tokens)


def failure_of(engine: Engine, prompt: str, max_new_tokens: int) -> EngineFailure | None:
    try:
        generate(engine, prompt, max_new_tokens)
    except EngineError as error:
        return error.failure
    return None


@pytest.mark.parametrize("make", [FakeVLLM, FakeSGLang])
def test_an_engine_error_names_the_status_and_the_engines_message(
    make: type[FakeOpenAIEngine],
) -> None:
    failure = (vllm_error if make is FakeVLLM else sglang_error)(500, "CUDA error: out of memory")
    with (
        make(failures=[failure]) as engine,
        pytest.raises(
            EngineError, match=r"^\w+ http://127\.0\.0\.1:\d+: HTTP 500: CUDA error: out of memory$"
        ) as caught,
    ):
        generate(make_engine(make.kind, engine.url, "fake/model", 30.0))
    assert (caught.value.failure, caught.value.status) == ("http", 500)


def test_vllm_health_is_part_of_its_info() -> None:
    with FakeVLLM(healthy=False) as engine:
        with pytest.raises(EngineError, match=r"GET /health: HTTP 503"):
            call(make_engine("vllm", engine.url, None, 30.0), lambda e: e.info())
        assert [r.path for r in engine.requests] == ["/health"]


@pytest.mark.parametrize(
    ("make", "running", "waiting"),
    [
        (FakeVLLM, "vllm:num_requests_running", "vllm:num_requests_waiting"),
        (FakeSGLang, "sglang:num_running_reqs", "sglang:num_queue_reqs"),
    ],
)
def test_the_doubles_count_running_and_queued_requests_under_their_engines_metric_names(
    make: type[FakeOpenAIEngine], running: str, waiting: str
) -> None:
    """What autoscaling reads: with two slots and five requests in flight, two run and three wait."""
    import aiohttp

    def gauge(page: str, name: str) -> float:
        [value] = [float(line.rsplit(" ", 1)[1]) for line in page.splitlines() if line.startswith(name + "{")]
        return value

    async def scrape_under_load(url: str) -> tuple[str, str]:
        engine = make_engine(make.kind, url, None, 30.0, "completions")
        async with aiohttp.ClientSession() as session:
            idle = await (await session.get(url + "/metrics")).text()
            load = [asyncio.create_task(engine.generate("hello", 4)) for _ in range(5)]
            await asyncio.sleep(0.5)
            busy = await (await session.get(url + "/metrics")).text()
            await asyncio.gather(*load)
        await engine.aclose()
        return idle, busy

    with make(max_running=2, latency_s=1.0) as fake:
        idle, busy = asyncio.run(scrape_under_load(fake.url))
    assert (gauge(idle, running), gauge(idle, waiting)) == (0, 0)
    assert (gauge(busy, running), gauge(busy, waiting)) == (2, 3)
    assert f'model_name="{fake.model_id}"' in busy
