"""Reading a request's JSON body so that nothing after it can fail on the client's bytes, for both APIs.

A body the server cannot take is a BodyError naming the field and the HTTP status (the caller puts it in its
API's error shape): over the payload limit (413), not JSON, a lone surrogate (JSON's escapes can spell one;
no tokenizer or encoder takes it), containers nested past MAX_JSON_DEPTH or past the decoder's stack,
numbers that are not finite or integers beyond 64 bits, or not an object.
"""

import json
import math
from typing import Any

from aiohttp import web

PAYLOAD_TOO_LARGE = "Failed to buffer the request body: length limit exceeded"  # TGI's (axum's) text
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

MAX_JSON_DEPTH = 32  # objects and arrays within each other: no request of either API nests more than 4
_INT64_BOUND = 2**63  # no count or setting this server takes is larger; beyond it ints are only a DoS lever
_SHOWN_CHARS = 80  # of a client's value echoed in an error message


class BodyError(Exception):
    """A body that is not a JSON object this server can read; `status` is the HTTP status to answer
    (413 over the payload limit, 400 for what TGI's JSON parser refuses, 422 for a value out of range)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_json_body(request: web.Request, payload_limit: int) -> dict[str, Any]:
    """The request's body as a checked JSON object (see parse_json_object); BodyError otherwise."""
    if (request.content_length or 0) > payload_limit:
        raise BodyError(413, PAYLOAD_TOO_LARGE)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:  # a chunked body that grew past the limit
        raise BodyError(413, PAYLOAD_TOO_LARGE) from None
    return parse_json_object(raw)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, checked so nothing later can fail on it: every string (keys too) is valid
    Unicode (JSON's escapes can spell a lone surrogate, which no tokenizer or encoder takes), containers
    nest at most MAX_JSON_DEPTH deep, numbers are finite and integers fit in 64 bits. Raises BodyError naming
    the field otherwise."""
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:  # the decoder recurses per level: thousands of "[" exhaust the stack
        raise BodyError(400, f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as error:
        raise BodyError(400, f"Failed to parse the request body as JSON: {error}") from None
    _check_values(body)
    if not isinstance(body, dict):
        raise BodyError(422, "the request body must be a JSON object")
    return body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_values(body: Any) -> None:
    """Walks the parsed body without recursion (so any depth the decoder took is safe to walk)."""
    pending: list[tuple[str, Any, int]] = [("", body, 0)]
    while pending:
        path, value, depth = pending.pop()
        if isinstance(value, str):
            _check_text(f"`{path or 'body'}`", value)
        elif isinstance(value, int) and not isinstance(value, bool):
            if not -_INT64_BOUND <= value < _INT64_BOUND:
                raise BodyError(422, f"`{path or 'body'}` is out of range: integers must fit in 64 bits")
        elif isinstance(value, float) and not math.isfinite(value):
            raise BodyError(422, f"`{path or 'body'}` is out of range: {value} is not a finite number")
        elif isinstance(value, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise BodyError(400, f"`{path or 'body'}` nests deeper than {MAX_JSON_DEPTH} levels")
            for key, item in value.items() if isinstance(value, dict) else enumerate(value):
                child = f"{path}[{key}]" if isinstance(key, int) else _child_path(path, key)
                pending.append((child, item, depth + 1))


def _child_path(path: str, key: str) -> str:
    _check_text(f"a key in `{path or 'body'}`", key)
    name = key if len(key) <= _SHOWN_CHARS else key[:_SHOWN_CHARS] + "..."
    return f"{path}.{name}" if path else name


def _check_text(where: str, text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        surrogate = f"\\u{ord(text[error.start]):04x}"
        raise BodyError(
            400, f"{where} is not valid Unicode: a lone surrogate ({surrogate}) at character {error.start}"
        ) from None


def shown(value: Any) -> str:
    """A client's value for an error message: its repr, cut short (a value may be megabytes)."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."
