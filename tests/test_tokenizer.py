from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.errors import InputError
from evaluation.local_model import ensure_local_tokenizer
from evaluation.tokenizer import FastTokenizer, Tokenizer, load_tokenizer

PROSE = (
    "The old lighthouse keeper had lived on the rocky island for nearly forty years, and in all that time "
    "he had never once failed to light the lamp. Researchers at the university announced on Tuesday that "
    "they had developed a new battery chemistry.\n\nIn this paper, we propose a simple method: 42 samples, "
    "3.5% error — naïve café 東京 🙂."
)


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One cache for the whole test session: every test file that needs the local model builds it once.
    return tmp_path_factory.getbasetemp() / "quasar-cache"


@pytest.fixture(scope="session")
def tok(cache_root: Path) -> Tokenizer:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QUASAR_CACHE", str(cache_root))
        return load_tokenizer(None)


def test_builtin_tokenizer_is_named_after_its_folder(tok: Tokenizer, cache_root: Path) -> None:
    assert tok.name == f"local:{cache_root / 'local-model-v1' / 'tokenizer'}"


def test_counts_are_roughly_realistic_on_prose(tok: Tokenizer) -> None:
    english = PROSE.split("\n\n")[0]
    assert 3.0 < len(english) / tok.count(english) < 5.0


def test_count_adds_no_special_tokens(tok: Tokenizer) -> None:
    assert tok.count("") == 0
    assert tok.count("the") == 1


def test_count_batch_matches_count(tok: Tokenizer) -> None:
    texts = [PROSE, "", " ", "a\n\n\nb", "東京 🙂", PROSE * 3]
    assert tok.count_batch(texts) == [tok.count(t) for t in texts]
    assert tok.count_batch([]) == []


def assert_longest_fitting_prefix(tok: Tokenizer, text: str, n: int, cut: str) -> None:
    assert text.startswith(cut)
    assert tok.count(cut) <= n
    if tok.count(text) <= n:
        assert cut == text
        return
    # Maximal: the prefix that also takes the next token (up to the next token's end) no longer fits.
    assert isinstance(tok, FastTokenizer)
    ends = [end for _, end in tok._backend.encode(text, add_special_tokens=False).offsets if end > len(cut)]
    assert tok.count(text[: min(ends)]) > n


def test_truncate_on_prose_is_the_longest_fitting_prefix(tok: Tokenizer) -> None:
    for n in range(tok.count(PROSE) + 2):
        assert_longest_fitting_prefix(tok, PROSE, n, tok.truncate(PROSE, n))


def test_truncate_meets_the_budget_exactly_on_plain_english(tok: Tokenizer) -> None:
    english = PROSE.split("\n\n")[0]
    assert all(tok.count(tok.truncate(english, n)) == n for n in range(tok.count(english) + 1))


def test_truncate_grows_its_window_on_dense_text(tok: Tokenizer) -> None:
    # Digits and emoji take more tokens per character than the first window guess assumes.
    dense = "🙂1" * 3000
    cut = tok.truncate(dense, 2500)
    assert dense.startswith(cut)
    assert tok.count(cut) <= 2500 < tok.count(dense[: len(cut) + 2])


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=120), n=st.integers(min_value=0, max_value=40))
def test_truncate_is_the_longest_fitting_token_prefix(tok: Tokenizer, text: str, n: int) -> None:
    assert_longest_fitting_prefix(tok, text, n, tok.truncate(text, n))


def test_roundtrip_through_the_transformers_wrapper(cache_root: Path) -> None:
    from transformers import AutoTokenizer

    folder = ensure_local_tokenizer(cache_root / "local-model-v1")
    wrapped = AutoTokenizer.from_pretrained(folder)
    ids = wrapped(PROSE, add_special_tokens=False)["input_ids"]
    assert wrapped.decode(ids) == PROSE
    assert len(ids) == load_tokenizer(str(folder)).count(PROSE)


def test_a_folder_without_tokenizer_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="holds no loadable tokenizer"):
        load_tokenizer(str(tmp_path))


def test_an_uncached_hub_id_offline_is_an_input_error_naming_it() -> None:
    # The suite runs with HF_HUB_OFFLINE=1 (conftest): this must fail at once, not after Hub retries.
    with pytest.raises(InputError, match=r"'no-such-org/no-such-model'.*HF_HUB_OFFLINE"):
        load_tokenizer("no-such-org/no-such-model")
