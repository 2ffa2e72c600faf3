"""Token counting with the miner model's tokenizer: bucket sizes are in its tokens, not characters.

Everything runs on the Rust (`tokenizers`) backend directly, with no special tokens added: it is fast on
multi-megabyte prompts, and it bypasses transformers' "sequence longer than model max length" warnings.
"""

import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from evaluation.errors import InputError

# Tokens near the end of an encoded window may change once more text follows (a word cut in two encodes
# differently); `truncate` only trusts a window holding this many tokens beyond the ones it keeps.
_WINDOW_MARGIN = 64
# First guess of characters per token when sizing `truncate`'s window (prose is ~4); it grows if short.
_CHARS_PER_TOKEN_GUESS = 6


class Tokenizer(Protocol):
    name: str

    def count(self, text: str) -> int:
        """Tokens in `text`, without special tokens."""
        ...

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        """`[count(t) for t in texts]`, encoded in parallel."""
        ...

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of `text` (cut at a token boundary) that counts at most `max_tokens` tokens."""
        ...


class FastTokenizer:
    """A `Tokenizer` over a `tokenizers.Tokenizer` (the Rust backend of every fast HF tokenizer)."""

    def __init__(self, name: str, backend: Any) -> None:
        self.name = name
        backend.no_truncation()
        backend.no_padding()
        self._backend = backend

    def count(self, text: str) -> int:
        return self.count_batch([text])[0]

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        # The "fast" batch encoder skips offset tracking: about twice as fast, and counting needs no offsets.
        encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
        return [len(encoding) for encoding in encode(list(texts), add_special_tokens=False)]

    def truncate(self, text: str, max_tokens: int) -> str:
        if max_tokens <= 0:
            return ""
        offsets = self._head_offsets(text, max_tokens)
        if offsets is None:
            return text
        # Keep the text of the first `keep` tokens. A cut prefix can re-encode differently from the same
        # tokens inside the whole text (a word cut in two; "\n" + "\n" merging into "\n\n"): so fit it by
        # re-encoding, first backing off while it is too long, then taking more tokens while they fit.
        keep = _char_boundary(offsets, max_tokens)
        while keep > 0 and (excess := self.count(text[: offsets[keep - 1][1]]) - max_tokens) > 0:
            keep = _char_boundary(offsets, keep - excess)
        while keep < len(offsets):
            longer = _char_boundary(offsets, keep + 1, forward=True)
            if self.count(text[: offsets[longer - 1][1]]) > max_tokens:
                break
            keep = longer
        return text[: offsets[keep - 1][1]] if keep else ""

    def _head_offsets(self, text: str, max_tokens: int) -> list[tuple[int, int]] | None:
        """Character offsets of the first tokens of `text` (at least `max_tokens` of them), or None when
        the whole text fits. Encodes a growing head of the text rather than all of it: cost follows
        `max_tokens`, not the length of `text`."""
        window = max_tokens * _CHARS_PER_TOKEN_GUESS
        while True:
            encoding = self._backend.encode(text[:window], add_special_tokens=False)
            tokens = len(encoding)
            if window >= len(text):
                return None if tokens <= max_tokens else list(encoding.offsets)
            if tokens > max_tokens + _WINDOW_MARGIN:
                return list(encoding.offsets)
            window *= 2


def _char_boundary(offsets: list[tuple[int, int]], keep: int, forward: bool = False) -> int:
    """The nearest count of leading tokens, at most `keep` (or at least, `forward`), that ends on a
    character boundary. Byte-level tokens can split one character (an emoji) into several tokens sharing
    its offsets: keeping only some of them would keep the whole character, and so all of its tokens."""
    while 0 < keep < len(offsets) and offsets[keep - 1][1] > offsets[keep][0]:
        keep += 1 if forward else -1
    return keep


def load_tokenizer(name_or_path: str | None = None) -> Tokenizer:
    """The tokenizer of a built-in model (`evaluation.local_model.BUILTIN_MODELS`; None means `tiny`), a
    local folder or a Hub model id.

    A Hub id loads where the Hub is reachable or the files are in the HF cache; otherwise this raises an
    InputError naming the id.
    """
    from evaluation.local_model import TINY_MODEL, ensure_local_tokenizer, resolve_model

    if name_or_path is None or name_or_path == TINY_MODEL:
        folder = ensure_local_tokenizer()  # the tokenizer alone: no torch needed
        return _from_tokenizer_json(f"local:{folder}", folder / "tokenizer.json")
    return FastTokenizer(name_or_path, _auto_backend(resolve_model(name_or_path)))


def _from_tokenizer_json(name: str, path: Path) -> FastTokenizer:
    # The built-in tokenizer is plain tokenizer.json: loading it directly skips importing transformers.
    from tokenizers import Tokenizer as RustTokenizer

    return FastTokenizer(name, RustTokenizer.from_file(str(path)))


def _auto_backend(name_or_path: str) -> Any:
    where = f"tokenizer {name_or_path!r}"
    try:
        from transformers import AutoTokenizer
    except ImportError as error:
        raise InputError(where, f"needs transformers ({error}); install quasar-subnet[eval]") from None
    try:
        # The HF cache or a local folder first: offline, the Hub client retries for ~45 s before failing.
        loaded = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError):
        if Path(name_or_path).exists():
            raise InputError(where, "this folder holds no loadable tokenizer (tokenizer.json)") from None
        unreachable = hub_unreachable()
        if unreachable:
            raise InputError(where, f"not a local folder, not in the HF cache, and {unreachable}") from None
        try:
            loaded = AutoTokenizer.from_pretrained(name_or_path)
        except (OSError, ValueError) as error:
            raise InputError(where, f"cannot load it from the Hub: {error}") from None
    if not getattr(loaded, "is_fast", False):
        raise InputError(where, "has no fast (Rust) tokenizer, which token counting needs")
    return loaded.backend_tokenizer


def hub_unreachable(timeout_s: float = 5.0) -> str | None:
    """Why the Hugging Face Hub cannot be reached, or None when a TCP connection to it opens."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout_s).close()
    except OSError as error:
        return f"the Hub ({constants.ENDPOINT}) is unreachable: {error}"
    return None
