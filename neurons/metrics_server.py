"""A neuron's Prometheus page, `GET /metrics`, on a listener of its own.

The metrics say how a neuron is doing (requests by outcome, refusal reasons, token totals): Prometheus needs
them, a stranger does not. On a port apart from the public one (the miner's axon), a deployment publishes the
one and keeps the other inside its network. The listener goes through the same HTTP guard as a public one.
"""

import socket

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from evaluation.errors import InputError
from evaluation.http_guard import GuardedSite, GuardLimits, serve_guarded

METRICS_PATH = "/metrics"


async def serve_metrics(
    registry: CollectorRegistry, host: str, port: int, limits: GuardLimits | None = None
) -> GuardedSite:
    """`GET /metrics` on host:port (0: any free port), nothing else; InputError names `--metrics.port`
    when it cannot listen there. `page_url(site)` is where the page is."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get(METRICS_PATH, page)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise InputError("--metrics.port", f"cannot listen on {host} port {port}: {error}") from None
    return await serve_guarded(app, sock, limits)


def page_url(site: GuardedSite) -> str:
    """The page's URL on a site `serve_metrics` started (an IPv6 address in brackets)."""
    host = f"[{site.host}]" if ":" in site.host else site.host
    return f"http://{host}:{site.port}{METRICS_PATH}"
