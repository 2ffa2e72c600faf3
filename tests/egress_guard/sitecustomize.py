"""No egress from the tests: every connection outside loopback is refused and recorded.

Python runs this at start-up in every process the tests start (tests/conftest.py puts this folder first on
PYTHONPATH), and conftest runs it in pytest itself. A refused connection raises OSError, which libraries
often swallow (telemetry, update checks), so each one is also appended to $QUASAR_EGRESS_LOG, and
conftest fails the test during which the log grew. Name lookups count: resolving a name other than
localhost asks a DNS server outside loopback. Binding to any address is allowed; it sends nothing.
"""

import errno
import ipaddress
import os
import socket
import sys
import traceback
from typing import Any

_LOG = os.environ.get("QUASAR_EGRESS_LOG")
_getaddrinfo = socket.getaddrinfo
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _address(host: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address `host` spells (a scope id dropped); None for a name."""
    text = host.decode(errors="replace") if isinstance(host, bytes) else str(host)
    try:
        return ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None


def _is_loopback(host: object) -> bool:
    address = _address(host)
    return host in (None, "localhost", b"localhost") or (address is not None and address.is_loopback)


def _refuse(what: str) -> OSError:
    if _LOG:
        frames = "".join(traceback.format_stack(limit=12)[:-2])
        with open(_LOG, "a", encoding="utf-8") as log:
            log.write(f"pid {os.getpid()} ({' '.join(sys.argv)[:200]}): {what}\n{frames}\n")
    return OSError(errno.ENETUNREACH, f"the tests allow loopback only: {what}")


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if not _is_loopback(host) and _address(host) is None:
        raise _refuse(f"name lookup of {host!r}")
    return _getaddrinfo(host, *args, **kwargs)


def _checked(sock: socket.socket, address: Any) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
        raise _refuse(f"connection to {address!r}")


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _checked(self, address)
    _connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _checked(self, address)
    return _connect_ex(self, address)


socket.getaddrinfo = _guarded_getaddrinfo
socket.socket.connect = _guarded_connect  # type: ignore[method-assign,assignment]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign,assignment]
