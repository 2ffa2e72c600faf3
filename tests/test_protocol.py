import gzip
import json
import math
import zlib
from dataclasses import asdict, replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neurons.protocol import (
    MAX_BODY_BYTES,
    MAX_PROMPT_BYTES,
    MAX_RESPONSE_BYTES,
    PROTOCOL_VERSION,
    REQUEST_HEADERS,
    ProtocolError,
    QueryRequest,
    QueryResponse,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)

REQUEST = QueryRequest(
    version=PROTOCOL_VERSION,
    task_id="round-7/hotpotqa/3",
    task="hotpotqa",
    bucket="32k",
    prompt="Passage 1: 长上下文 ... Question: who?",
    max_new_tokens=32,
    deadline_unix=1_800_000_000.5,
)
RESPONSE = QueryResponse(
    version=PROTOCOL_VERSION,
    task_id="round-7/hotpotqa/3",
    text="Ada Lovelace",
    prompt_tokens=31_000,
    completion_tokens=4,
    engine="tgi",
    model="tiny",
    engine_latency_s=0.25,
    total_latency_s=0.3,
)


def gzip_json(fields: dict[str, Any]) -> bytes:
    return gzip.compress(json.dumps(fields).encode())


def assert_request_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError, match=field) as info:
        decode_request(gzip_json(fields))
    assert info.value.field == field


def assert_response_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError, match=field) as info:
        decode_response(json.dumps(fields).encode())
    assert info.value.field == field


def test_request_round_trips_as_gzip_json() -> None:
    body = encode_request(REQUEST)
    assert REQUEST_HEADERS["Content-Encoding"] == "gzip"
    # Any gzip implementation reads it: what the header promises is what is sent.
    assert json.loads(gzip.decompress(body))["prompt"] == REQUEST.prompt
    assert decode_request(body) == REQUEST


def test_response_round_trips() -> None:
    assert decode_response(encode_response(RESPONSE)) == RESPONSE
    unknown = replace(RESPONSE, prompt_tokens=None, completion_tokens=None, model=None, text="")
    assert decode_response(encode_response(unknown)) == unknown


def test_integer_deadline_and_latencies_decode_as_floats() -> None:
    decoded = decode_request(gzip_json({**asdict(REQUEST), "deadline_unix": 1_800_000_000}))
    assert decoded.deadline_unix == 1_800_000_000.0
    assert isinstance(decoded.deadline_unix, float)
    response = decode_response(json.dumps({**asdict(RESPONSE), "engine_latency_s": 1}).encode())
    assert isinstance(response.engine_latency_s, float)


@given(
    st.text(min_size=1, max_size=200),
    st.integers(min_value=1, max_value=2**31),
    st.floats(allow_nan=False, allow_infinity=False),
)
def test_any_valid_request_round_trips(prompt: str, max_new_tokens: int, deadline: float) -> None:
    request = replace(REQUEST, prompt=prompt, max_new_tokens=max_new_tokens, deadline_unix=deadline)
    assert decode_request(encode_request(request)) == request


@pytest.mark.parametrize("version", [0, 2, "1", 1.0, True, None])
def test_unknown_version_is_rejected_first(version: object) -> None:
    # Even with other fields missing, the version is what gets reported.
    assert_request_field({"version": version}, "version")
    assert_response_field({"version": version}, "version")


@pytest.mark.parametrize("field", [f for f in asdict(REQUEST) if f != "version"])
def test_missing_request_field_is_named(field: str) -> None:
    fields = asdict(REQUEST)
    del fields[field]
    assert_request_field(fields, field)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("task_id", ""),
        ("task_id", 7),
        ("task", None),
        ("bucket", ["32k"]),
        ("prompt", ""),
        ("prompt", {"text": "x"}),
        ("max_new_tokens", 0),
        ("max_new_tokens", -5),
        ("max_new_tokens", 1.5),
        ("max_new_tokens", 32.0),
        ("max_new_tokens", True),
        ("max_new_tokens", "32"),
        ("deadline_unix", "soon"),
        ("deadline_unix", None),
        ("deadline_unix", False),
        ("deadline_unix", 10**400),
        ("prompt", "half a pair \ud800"),
        ("task_id", "\udc00"),
        ("bucket", "32k\udfff"),
    ],
)
def test_wrong_request_field_is_named(field: str, value: object) -> None:
    assert_request_field({**asdict(REQUEST), field: value}, field)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_deadline_is_rejected(literal: str) -> None:
    # Python's JSON reader accepts these non-standard literals, so the field check must catch them.
    raw = json.dumps({**asdict(REQUEST), "deadline_unix": 0}).replace(
        '"deadline_unix": 0', f'"deadline_unix": {literal}'
    )
    with pytest.raises(ProtocolError) as info:
        decode_request(gzip.compress(raw.encode()))
    assert info.value.field == "deadline_unix"


def test_unknown_request_field_is_named() -> None:
    assert_request_field({**asdict(REQUEST), "expected_answer": "leak"}, "expected_answer")


def test_an_unknown_field_named_with_a_lone_surrogate_is_named_printably() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_request(gzip_json({**asdict(REQUEST), "x\ud800": 1}))
    assert info.value.field == "x\\ud800"
    str(info.value).encode("utf-8")  # safe to log and send back


@given(st.text(st.characters(exclude_categories=()), min_size=1, max_size=50))
def test_a_string_decodes_exactly_when_utf8_can_carry_it(text: str) -> None:
    """JSON can carry lone surrogates; the engine call cannot: those are refused, naming the field."""
    body = gzip_json({**asdict(REQUEST), "prompt": text})
    if any(0xD800 <= ord(char) <= 0xDFFF for char in text):
        assert_request_field({**asdict(REQUEST), "prompt": text}, "prompt")
    else:
        assert decode_request(body).prompt == text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("task_id", ""),
        ("text", None),
        ("prompt_tokens", -1),
        ("completion_tokens", "4"),
        ("completion_tokens", False),
        ("engine", ""),
        ("model", 3),
        ("engine_latency_s", -0.1),
        ("total_latency_s", math.inf),
        ("total_latency_s", "fast"),
    ],
)
def test_wrong_response_field_is_named(field: str, value: object) -> None:
    assert_response_field({**asdict(RESPONSE), field: value}, field)


@pytest.mark.parametrize("field", [f for f in asdict(RESPONSE) if f != "version"])
def test_missing_response_field_is_named(field: str) -> None:
    fields = asdict(RESPONSE)
    del fields[field]
    assert_response_field(fields, field)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not gzip at all",
        json.dumps(asdict(REQUEST)).encode(),  # uncompressed
        zlib.compress(b"{}"),  # zlib container, not gzip
        gzip.compress(b"[1, 2]"),
        gzip.compress(b'{"version": 1,'),
        gzip.compress(b"\xff\xfe not utf-8"),
        gzip.compress(b"[" * 100_000 + b"]" * 100_000),
        gzip.compress(b'{"version": 1, "max_new_tokens": ' + b"9" * 5000 + b"}"),  # over int's digit limit
        gzip.compress(json.dumps(asdict(REQUEST)).encode())[:-4],  # truncated
        gzip.compress(json.dumps(asdict(REQUEST)).encode()) + b"junk",
    ],
)
def test_malformed_request_body_is_a_body_error(body: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_request(body)
    assert info.value.field == "body"


def test_malformed_response_body_is_a_body_error() -> None:
    for body in (b"", b"{", b"[]", b"\xff"):
        with pytest.raises(ProtocolError) as info:
            decode_response(body)
        assert info.value.field == "body"


def test_decompression_bomb_is_stopped_at_the_limit() -> None:
    # ~64 KB on the wire that would inflate past MAX_PROMPT_BYTES.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b" " * (1024 * 1024)
    bomb = b"".join(compressor.compress(chunk) for _ in range(MAX_PROMPT_BYTES // len(chunk) + 1))
    bomb += compressor.flush()
    assert len(bomb) < 1024 * 1024
    with pytest.raises(ProtocolError, match="exceeds") as info:
        decode_request(bomb)
    assert info.value.field == "body"


def test_oversized_compressed_body_is_rejected_before_decompression() -> None:
    with pytest.raises(ProtocolError, match="compressed body exceeds") as info:
        decode_request(b"\0" * (MAX_BODY_BYTES + 1))
    assert info.value.field == "body"


def test_oversized_response_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="response exceeds"):
        decode_response(b" " * (MAX_RESPONSE_BYTES + 1))


def test_encoding_validates_so_bad_requests_never_leave_the_validator() -> None:
    with pytest.raises(ProtocolError) as info:
        encode_request(replace(REQUEST, max_new_tokens=0))
    assert info.value.field == "max_new_tokens"
    with pytest.raises(ProtocolError) as info:
        encode_response(replace(RESPONSE, total_latency_s=math.nan))
    assert info.value.field == "total_latency_s"


def test_long_prompt_compresses_and_survives_intact() -> None:
    prompt = "".join(
        f"Passage {i}: the quick brown fox {i * 7919 % 1000} 跳过了懒狗。\n" for i in range(100_000)
    )
    body = encode_request(replace(REQUEST, prompt=prompt))
    assert len(body) < len(prompt.encode()) / 3
    assert decode_request(body).prompt == prompt
