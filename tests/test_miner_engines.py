"""The miner in front of each engine kind, end to end over loopback HTTP: signed validator queries through
the miner's real engine clients to the TGI, vLLM and SGLang doubles (tests/fake_tgi.py,
tests/fake_openai_engines.py), each speaking its engine's own API, limits and errors."""

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from evaluation.engines import EngineApi, EngineKind
from evaluation.local_model import ensure_local_tokenizer
from evaluation.tokenizer import load_tokenizer
from tests.fake_openai_engines import CHAT_CLOSING, CHAT_OPENING, FakeOpenAIEngine, FakeSGLang, FakeVLLM
from tests.fake_tgi import FakeTGI
from tests.test_miner import Client, Wallets, chain, query, serving, wallets

__all__ = ["chain", "wallets"]  # the fixtures, shared with tests/test_miner.py

FakeEngine = FakeTGI | FakeOpenAIEngine
CONTEXT = 64  # tokens the engines hold, small so prompts around it are cheap

# (engine kind, API, the double): every way the miner can ask an engine.
SETUPS: list[tuple[EngineKind, EngineApi, Callable[..., FakeEngine]]] = [
    ("tgi", "chat", FakeTGI),  # TGI ignores the API: always /generate
    ("vllm", "chat", FakeVLLM),
    ("vllm", "completions", FakeVLLM),
    ("sglang", "chat", FakeSGLang),
    ("sglang", "completions", FakeSGLang),
]
IDS = [f"{kind}-{api}" if kind != "tgi" else kind for kind, api, _ in SETUPS]


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_local_tokenizer(tmp_path_factory.mktemp("quasar-cache"))


def start(make: Callable[..., FakeEngine], count: Callable[[str], int] | None = None) -> FakeEngine:
    """A double holding CONTEXT tokens (TGI: CONTEXT - 1 of input, as TGI's defaults split it)."""
    limits: dict[str, Any] = (
        {"max_input_tokens": CONTEXT - 1, "max_total_tokens": CONTEXT}
        if make is FakeTGI
        else {"max_model_len": CONTEXT}
    )
    counting = {"count_tokens": count} if count is not None else {}
    engine = make(answer="the answer", **limits, **counting)
    engine.start()
    return engine


@pytest.fixture(params=SETUPS, ids=IDS)
def setup(request: pytest.FixtureRequest) -> tuple[EngineKind, EngineApi, Callable[..., FakeEngine]]:
    value: tuple[EngineKind, EngineApi, Callable[..., FakeEngine]] = request.param
    return value


def ask(
    wallets: Wallets,
    chain: Any,
    engine: FakeEngine,
    kind: EngineKind,
    api: EngineApi,
    prompts: list[str],
    max_new_tokens: int = 8,
    **config: Any,
) -> tuple[list[tuple[int, dict[str, Any]]], tuple[int, str]]:
    """Each prompt as a signed validator query through a miner in front of `engine`; then /readyz."""

    async def go() -> tuple[list[tuple[int, dict[str, Any]]], tuple[int, str]]:
        async with serving(
            wallets, chain, engine.url, engine_kind=kind, engine_api=api, model_name="fake/model", **config
        ) as client:
            answers = [await post(client, wallets, prompt, max_new_tokens) for prompt in prompts]
            return answers, await client.get("/readyz")

    return asyncio.run(go())


async def post(
    client: Client, wallets: Wallets, prompt: str, max_new_tokens: int
) -> tuple[int, dict[str, Any]]:
    return await client.post(query(prompt, max_new_tokens=max_new_tokens), wallets.validator)


def generations(engine: FakeEngine) -> list[Any]:
    return [request for request in engine.requests if request.method == "POST"]


def test_a_signed_query_is_answered_through_the_engines_own_api(
    wallets: Wallets, chain: Any, setup: tuple[EngineKind, EngineApi, Callable[..., FakeEngine]]
) -> None:
    kind, api, make = setup
    engine = start(make)
    try:
        [(status, body)], (ready, _) = ask(wallets, chain, engine, kind, api, ["where is the needle"])
    finally:
        engine.stop()
    assert (status, ready) == (200, 200), body
    assert (body["text"], body["engine"], body["model"]) == ("the answer", kind, "fake/model")
    assert body["completion_tokens"] == 2
    [sent] = generations(engine)
    if kind == "tgi":
        assert sent.body["inputs"] == "where is the needle"
        return
    assert sent.body["model"] == "fake/model"
    assert sent.body["max_tokens"] == 8
    assert sent.body["temperature"] == 0
    if api == "chat":  # the server applies the chat template: its count includes the template's tokens
        assert sent.path == "/v1/chat/completions"
        assert sent.body["messages"] == [{"role": "user", "content": "where is the needle"}]
        templated = CHAT_OPENING + "where is the needle" + CHAT_CLOSING
        assert body["prompt_tokens"] == engine.count_tokens(templated) > 4
    else:
        assert sent.path == "/v1/completions"
        assert sent.body["prompt"] == "where is the needle"
        assert body["prompt_tokens"] == 4


def test_with_the_engines_tokenizer_a_prompt_that_cannot_fit_never_reaches_the_engine(
    wallets: Wallets,
    chain: Any,
    setup: tuple[EngineKind, EngineApi, Callable[..., FakeEngine]],
    tokenizer_folder: Path,
) -> None:
    """Prompts of every size around the context: 413 exactly when the engine (the oracle, counting with
    the same tokenizer) would refuse; those the miner's own count proves too long are never sent."""
    kind, api, make = setup
    tokenizer = load_tokenizer(str(tokenizer_folder))
    engine = start(make, tokenizer.count)
    sizes = range(CONTEXT - 14, CONTEXT + 4, 3)
    prompts = ["the" + " the" * (size - 1) for size in sizes]
    assert [tokenizer.count(prompt) for prompt in prompts] == list(sizes)
    try:
        answers, _ = ask(wallets, chain, engine, kind, api, prompts, engine_tokenizer=str(tokenizer_folder))
    finally:
        engine.stop()
    sent = [request.body for request in generations(engine)]
    for size, prompt, (status, body) in zip(sizes, prompts, answers, strict=True):
        engine_prompt = CHAT_OPENING + prompt + CHAT_CLOSING if api == "chat" and kind != "tgi" else prompt
        fits = engine_fits(kind, tokenizer.count(engine_prompt), 8)
        assert status == (200 if fits else 413), (size, body)
        if size + 8 > CONTEXT - (kind == "sglang"):  # over by the miner's own count: refused here
            assert body["prompt_tokens"] == size
            assert (body["max_new_tokens"], body["max_total_tokens"]) == (8, expected_total(kind))
            assert not any(prompt in str(request) for request in sent)


def engine_fits(kind: EngineKind, prompt_tokens: int, max_new_tokens: int) -> bool:
    """Whether the engine takes the prompt, by its own rule (see tests/fake_openai_engines.py)."""
    total = prompt_tokens + max_new_tokens
    if kind == "sglang":
        return prompt_tokens < CONTEXT and total < CONTEXT
    return prompt_tokens < CONTEXT and total <= CONTEXT


def expected_total(kind: EngineKind) -> int:
    return CONTEXT - 1 if kind == "sglang" else CONTEXT


def test_the_engines_length_refusal_is_a_413_with_its_numbers(
    wallets: Wallets, chain: Any, setup: tuple[EngineKind, EngineApi, Callable[..., FakeEngine]]
) -> None:
    """Without the tokenizer the engine finds the prompt too long; the miner passes its words on."""
    kind, api, make = setup
    engine = start(make)
    prompt = "word " * (CONTEXT + 10)
    try:
        [(status, body)], _ = ask(wallets, chain, engine, kind, api, [prompt])
    finally:
        engine.stop()
    assert status == 413, body
    assert body["error"] == "too_large"
    engine_prompt = CHAT_OPENING + prompt + CHAT_CLOSING if api == "chat" and kind != "tgi" else prompt
    limit = CONTEXT - 1 if kind == "tgi" else CONTEXT  # TGI states its input limit, the others the context
    # The engine's limit and its count of the prompt, in its own words.
    assert f"{limit} tokens" in body["engine_message"]
    assert str(engine.count_tokens(engine_prompt)) in body["engine_message"]
    assert body["max_total_tokens"] == expected_total(kind)
    assert len(generations(engine)) == 1


def test_an_engine_that_is_down_is_a_503_and_not_ready(
    wallets: Wallets, chain: Any, setup: tuple[EngineKind, EngineApi, Callable[..., FakeEngine]]
) -> None:
    kind, api, make = setup
    engine = start(make)
    engine.stop()  # its port now refuses connections
    [(status, body)], (ready, problems) = ask(wallets, chain, engine, kind, api, ["hello"])
    assert (status, body["error"]) == (503, "engine_down")
    assert ready == 503
    assert "cannot reach the engine" in problems


def test_an_unhealthy_vllm_is_not_ready_and_gets_no_queries(wallets: Wallets, chain: Any) -> None:
    """vLLM's /health fails when its engine core is dead while its API server still lists the model."""
    engine = start(FakeVLLM)
    assert isinstance(engine, FakeVLLM)
    engine.healthy = False
    try:
        [(status, body)], (ready, problems) = ask(wallets, chain, engine, "vllm", "chat", ["hello"])
    finally:
        engine.stop()
    assert (status, body["error"], ready) == (503, "engine_down", 503)
    assert "GET /health: HTTP 503" in problems
    assert generations(engine) == []


@pytest.fixture
def vllm() -> Iterator[FakeVLLM]:
    with FakeVLLM(model_id="served/name", max_model_len=CONTEXT) as engine:
        yield engine


def test_a_model_the_engine_does_not_serve_is_refused_by_name(
    wallets: Wallets, chain: Any, vllm: FakeVLLM
) -> None:
    [(status, body)], (ready, problems) = ask(wallets, chain, vllm, "vllm", "chat", ["hello"])
    assert (status, body["error"], ready) == (503, "engine_down", 503)
    assert "does not serve model 'fake/model' (it serves: 'served/name')" in problems
    assert generations(vllm) == []
