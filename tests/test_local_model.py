import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from evaluation.local_model import (
    BUILTIN_MODELS,
    GEMMA_MODEL,
    LOCAL_MAX_TOTAL_TOKENS,
    TINY_MODEL,
    VOCAB_SIZE,
    _ensure_built,
    cache_root,
    ensure_gemma_model,
    ensure_local_model,
    has_chat_template,
    resolve_model,
)
from evaluation.tokenizer import load_tokenizer


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The session cache the tokenizer and engine tests also use: the tiny model is built once per run.
    return ensure_local_model(tmp_path_factory.getbasetemp() / "quasar-cache" / "local-model-v1")


def test_cache_root_follows_quasar_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QUASAR_CACHE", str(tmp_path))
    assert cache_root() == tmp_path / "local-model-v1"
    monkeypatch.delenv("QUASAR_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "quasar" / "local-model-v1"


def test_the_model_folder_loads_with_the_auto_classes(model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in model_dir.iterdir()
    }
    assert json.loads((model_dir / "tokenizer_config.json").read_text())["tokenizer_class"] == (
        "PreTrainedTokenizerFast"
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = model.config
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("llama", 64, 2)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.max_position_embeddings == LOCAL_MAX_TOTAL_TOKENS
    assert config.vocab_size == VOCAB_SIZE == len(tokenizer)
    # Without model_input_names, the tokenizer would return token_type_ids, which generate() rejects.
    assert set(tokenizer("hello")) == {"input_ids", "attention_mask"}


def test_a_built_model_is_reused_not_rebuilt(model_dir: Path) -> None:
    weights = model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert ensure_local_model(model_dir.parent) == model_dir
    assert weights.stat().st_mtime_ns == before


def test_the_build_is_deterministic(model_dir: Path, tmp_path: Path) -> None:
    again = ensure_local_model(tmp_path)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (model_dir / name).read_bytes(), name


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    def half_write(folder: Path) -> None:
        (folder / "part").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _ensure_built(tmp_path / "model", half_write)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_builders_agree_on_one_result(tmp_path: Path) -> None:
    def slow_write(folder: Path) -> None:
        time.sleep(0.2)
        (folder / "by").write_text(threading.current_thread().name)

    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(_ensure_built(tmp_path / "model", slow_write)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [tmp_path / "model"] * 3
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging folders left
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["by"]


def test_model_names_resolve_to_folders_and_anything_else_passes_through(model_dir: Path) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QUASAR_CACHE", str(model_dir.parent.parent))
        assert resolve_model(None) == resolve_model(TINY_MODEL) == str(model_dir)
    assert resolve_model("some/hub-id") == "some/hub-id"
    assert set(BUILTIN_MODELS) == {TINY_MODEL, GEMMA_MODEL}


def test_gemma_is_a_base_model_that_reads_a_planted_number() -> None:
    """The real model of mock mode: converted once into the user's cache (minutes the first time), then it
    completes a short completion-style prompt with the number planted in its context."""
    from evaluation.engines import make_engine

    folder = ensure_gemma_model()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert not has_chat_template(str(folder))  # a base model: asked to complete text, not to chat
    tokenizer = load_tokenizer(GEMMA_MODEL)
    filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
    number = "7306514"
    prompt = (
        f"{filler * 4}The special magic number for the lantern is {number}.\n{filler * 4}\n\n"
        "Question: What is the special magic number for the lantern?\nAnswer: The special magic number for "
        "the lantern is"
    )
    assert tokenizer.count(prompt) < 400

    async def answer() -> str:
        engine = make_engine("local", None, resolve_model(GEMMA_MODEL), 600)
        try:
            return (await engine.generate(prompt, 8)).text
        finally:
            await engine.aclose()

    assert number in asyncio.run(answer())
