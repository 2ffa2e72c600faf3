"""The versioned wire protocol between validator and miner (see docs/neurons.md, "Protocol").

A request carries a long prompt (up to ~8 MB for a 2M-token context), so its body is gzip-compressed JSON,
encoded once per round and sent unchanged to every miner. Decoding is strict and bounded: the miner reads
bodies from anyone holding a validator permit, so every field is checked and decompression stops at
MAX_PROMPT_BYTES. The expected answer is deliberately not part of the protocol.
"""

import dataclasses
import json
import math
import zlib
from dataclasses import asdict, dataclass
from typing import Any

PROTOCOL_VERSION = 1
QUERY_PATH = "/v1/query"
MAX_BODY_BYTES = 32 * 1024 * 1024  # compressed request body on the wire
MAX_PROMPT_BYTES = 64 * 1024 * 1024  # request JSON after decompression
# Responses are a short answer plus metadata; the cap keeps a hostile miner from filling validator memory.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
REQUEST_HEADERS = {"Content-Type": "application/json", "Content-Encoding": "gzip"}

# Level 1: on long natural-language prompts it compresses nearly as well as the default level at a
# fraction of the time, and the validator compresses an 8 MB context every round.
_COMPRESS_LEVEL = 1
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip container, as Content-Encoding: gzip promises


class ProtocolError(ValueError):
    """A request or response body that does not follow the protocol; `field` names the offending part."""

    def __init__(self, field: str, reason: str = "invalid") -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class QueryRequest:
    version: int
    task_id: str
    task: str
    bucket: str
    prompt: str
    max_new_tokens: int
    deadline_unix: float


@dataclass(frozen=True)
class QueryResponse:
    version: int
    task_id: str
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    engine: str
    model: str | None
    engine_latency_s: float
    total_latency_s: float


_REQUEST_FIELDS = tuple(field.name for field in dataclasses.fields(QueryRequest))
_RESPONSE_FIELDS = tuple(field.name for field in dataclasses.fields(QueryResponse))


def encode_request(request: QueryRequest) -> bytes:
    """gzip-compressed JSON. Validated first, so a validator bug fails here rather than at every miner."""
    fields = asdict(request)
    _request_from_fields(fields)
    raw = json.dumps(fields, ensure_ascii=False, allow_nan=False).encode("utf-8")
    compressor = zlib.compressobj(_COMPRESS_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
    return compressor.compress(raw) + compressor.flush()


def decode_request(body: bytes) -> QueryRequest:
    if len(body) > MAX_BODY_BYTES:
        raise ProtocolError("body", f"compressed body exceeds {MAX_BODY_BYTES} bytes")
    return _request_from_fields(_load_object(_gunzip_bounded(body, MAX_PROMPT_BYTES)))


def encode_response(response: QueryResponse) -> bytes:
    fields = asdict(response)
    _response_from_fields(fields)
    return json.dumps(fields, ensure_ascii=False, allow_nan=False).encode("utf-8")


def decode_response(body: bytes) -> QueryResponse:
    if len(body) > MAX_RESPONSE_BYTES:
        raise ProtocolError("body", f"response exceeds {MAX_RESPONSE_BYTES} bytes")
    return _response_from_fields(_load_object(body))


def _gunzip_bounded(body: bytes, limit: int) -> bytes:
    """Decompress a single gzip member, never producing more than `limit` bytes (decompression bombs)."""
    decompressor = zlib.decompressobj(_GZIP_WBITS)
    try:
        # max_length bounds the output buffer, so a bomb costs at most `limit` bytes of memory; one byte
        # more than the limit tells "too big" apart from "exactly the limit".
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError("body", f"not valid gzip: {exc}") from None
    if len(data) > limit:
        raise ProtocolError("body", f"decompressed body exceeds {limit} bytes")
    if not decompressor.eof:
        raise ProtocolError("body", "truncated gzip stream")
    if decompressor.unused_data:
        raise ProtocolError("body", "trailing data after the gzip stream")
    return data


def _load_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    # ValueError covers bad UTF-8, bad JSON and over-long integer literals; RecursionError deep nesting.
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("body", f"not valid UTF-8 JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError("body", "expected a JSON object")
    return value


def _request_from_fields(fields: dict[str, Any]) -> QueryRequest:
    _check_version_and_keys(fields, _REQUEST_FIELDS)
    return QueryRequest(
        version=PROTOCOL_VERSION,
        task_id=_nonempty_str(fields, "task_id"),
        task=_nonempty_str(fields, "task"),
        bucket=_nonempty_str(fields, "bucket"),
        prompt=_nonempty_str(fields, "prompt"),
        max_new_tokens=_int(fields, "max_new_tokens", minimum=1),
        deadline_unix=_finite_float(fields, "deadline_unix"),
    )


def _response_from_fields(fields: dict[str, Any]) -> QueryResponse:
    _check_version_and_keys(fields, _RESPONSE_FIELDS)
    return QueryResponse(
        version=PROTOCOL_VERSION,
        task_id=_nonempty_str(fields, "task_id"),
        text=_str(fields, "text"),  # an empty answer is a valid (if worthless) answer
        prompt_tokens=_optional_int(fields, "prompt_tokens"),
        completion_tokens=_optional_int(fields, "completion_tokens"),
        engine=_nonempty_str(fields, "engine"),
        model=_optional_str(fields, "model"),
        engine_latency_s=_finite_float(fields, "engine_latency_s", minimum=0.0),
        total_latency_s=_finite_float(fields, "total_latency_s", minimum=0.0),
    )


def _check_version_and_keys(fields: dict[str, Any], expected: tuple[str, ...]) -> None:
    # The version is checked before anything else: a future version may legitimately have other fields.
    version = fields.get("version")
    if type(version) is not int or version != PROTOCOL_VERSION:
        # Truncated: the value comes from the peer and may be arbitrarily long.
        raise ProtocolError("version", f"unsupported {version!r:.40} (expected {PROTOCOL_VERSION})")
    for key in fields:
        if key not in expected:
            raise ProtocolError(_printable(key, 40), "unknown field")
    for key in expected:
        if key not in fields:
            raise ProtocolError(key, "missing")


def _printable(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, lone surrogates escaped: safe to encode, log and send back."""
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def _str(fields: dict[str, Any], name: str) -> str:
    value = fields[name]
    if not isinstance(value, str):
        raise ProtocolError(name, f"expected a string, got {type(value).__name__}")
    try:
        # JSON may escape half a surrogate pair ("\ud800"): a str Python holds but no UTF-8 can carry, so
        # the engine call (or the answer echoing task_id) would fail on it.
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ProtocolError(name, f"not valid Unicode: a lone surrogate at character {error.start}") from None
    return value


def _nonempty_str(fields: dict[str, Any], name: str) -> str:
    value = _str(fields, name)
    if not value:
        raise ProtocolError(name, "must not be empty")
    return value


def _optional_str(fields: dict[str, Any], name: str) -> str | None:
    return None if fields[name] is None else _str(fields, name)


def _int(fields: dict[str, Any], name: str, minimum: int) -> int:
    value = fields[name]
    # type() rather than isinstance(): JSON true must not pass as 1.
    if type(value) is not int:
        raise ProtocolError(name, f"expected an integer, got {type(value).__name__}")
    if value < minimum:
        raise ProtocolError(name, f"must be at least {minimum}, got {value}")
    return value


def _optional_int(fields: dict[str, Any], name: str) -> int | None:
    return None if fields[name] is None else _int(fields, name, minimum=0)


def _finite_float(fields: dict[str, Any], name: str, minimum: float = -math.inf) -> float:
    value = fields[name]
    if type(value) not in (int, float):
        raise ProtocolError(name, f"expected a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an integer literal too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise ProtocolError(name, "must be finite")
    if number < minimum:
        raise ProtocolError(name, f"must be at least {minimum}, got {number}")
    return number
