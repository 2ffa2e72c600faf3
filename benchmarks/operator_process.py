"""What the operator benchmarks share about the operator's process: when it is alive, and what it costs."""

import asyncio
import contextlib
import os
import subprocess
import time
from pathlib import Path

import aiohttp


def proc_status(pid: int) -> tuple[float, float]:
    """Peak RSS in MB and CPU seconds (user + system) of a live process, from /proc."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    peak_kb = float(fields["VmHWM"].split()[0])
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return peak_kb / 1024, (int(stat[11]) + int(stat[12])) / ticks


async def wait_alive(session: aiohttp.ClientSession, port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the operator exited with {process.returncode} before it was ready")
        with contextlib.suppress(aiohttp.ClientConnectionError):
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError("the operator's liveness endpoint did not answer within 60 s")
