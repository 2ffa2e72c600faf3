"""The API server's only way out to nodes, pods and services: an HTTP CONNECT proxy on a Unix socket.

kube-apiserver sends every connection it makes into the cluster (its proxy subresources, logs, exec,
webhooks) through the egress selector (`--egress-selector-config-file`). Pointed here, those connections
reach 127.0.0.0/8 and nothing else: any other destination (a webhook or an endpoint someone set elsewhere)
is refused with 403 and written, one `host:port` a line, to the refusal log.

Usage: python egress_guard.py SOCKET REFUSAL_LOG
"""

import asyncio
import ipaddress
import sys
from pathlib import Path

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def allowed(host: str) -> bool:
    """Only literal loopback addresses: a name would need a DNS lookup, which may leave the machine."""
    try:
        return ipaddress.ip_address(host.strip("[]")) in LOOPBACK
    except ValueError:
        return False


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, refusals: Path) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    method, target, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    host, _, port = target.rpartition(":")
    if method != "CONNECT" or not port.isdigit() or not allowed(host):
        with refusals.open("a", encoding="utf-8") as log:
            log.write(f"{target}\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
        writer.close()
        return
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection(host.strip("[]"), int(port))
    except OSError as exc:
        writer.write(f"HTTP/1.1 502 Bad Gateway\r\n\r\n{exc}".encode())
        writer.close()
        return
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True)


async def serve(socket_path: Path, refusals: Path) -> None:
    refusals.touch()
    server = await asyncio.start_unix_server(lambda r, w: handle(r, w, refusals), path=str(socket_path))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1]), Path(sys.argv[2])))
