"""The suite's egress guard (tests/egress_guard) is loaded in the processes the tests start, refuses what
leaves loopback, records it, and lets loopback through."""

import errno
import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import socket, sys
def attempt(target):
    try:
        socket.create_connection(target, timeout=2).close()
    except OSError as error:
        return f"{error.errno}"
    return "connected"
listener = socket.create_server(("127.0.0.1", 0))
print(attempt(("192.0.2.10", 80)), attempt(("example.com", 443)), attempt(listener.getsockname()))
"""


def test_a_started_process_may_reach_loopback_only_and_each_refusal_is_recorded(tmp_path: Path) -> None:
    log = tmp_path / "refused.log"
    # Its own log: the session's would (rightly) fail this test.
    env = {**os.environ, "QUASAR_EGRESS_LOG": str(log)}
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    refused = str(errno.ENETUNREACH)
    assert done.stdout.split() == [refused, refused, "connected"]
    records = [line for line in log.read_text().splitlines() if line.startswith("pid ")]
    assert len(records) == 2
    assert "connection to ('192.0.2.10', 80)" in records[0]
    assert "name lookup of 'example.com'" in records[1]
