"""`quasar operator run`: the operator in this process, kopf's event loop with QUASAR's handlers."""

import argparse
import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace

import kopf
from prometheus_client import start_http_server

from quasar_operator.handlers import build_registry, configure
from quasar_operator.settings import Settings


async def run(
    settings: Settings,
    *,
    connection: kopf.ConnectionInfo | None = None,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
) -> None:
    """Run until `stop_flag` is set (or a signal arrives): shared by the command and the tests."""
    kopf_settings = kopf.OperatorSettings()
    configure(kopf_settings, settings)
    await kopf.operator(
        registry=build_registry(settings, connection),
        settings=kopf_settings,
        # One replica by design (the Deployment's strategy is Recreate): no peering objects to coordinate.
        standalone=True,
        clusterwide=settings.namespaces is None,
        namespaces=settings.namespaces or (),
        liveness_endpoint=f"http://0.0.0.0:{settings.liveness_port}/healthz",
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def parse(
    argv: Sequence[str] | None, prog: str, env: Mapping[str, str] | None = None
) -> tuple[Settings, bool]:
    """The settings (the environment's, overridden by the flags) and whether to log at debug level."""
    parser = argparse.ArgumentParser(prog=prog, description="The QUASAR Kubernetes operator.")
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="reconcile QuasarMiners and QuasarValidators")
    scope = run_parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", action="append", dest="namespaces", metavar="NS", help="watch NS (repeatable)"
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (default)")
    defaults = Settings.from_env(env)
    run_parser.add_argument("--liveness-port", type=int, default=defaults.liveness_port)
    run_parser.add_argument("--metrics-port", type=int, default=defaults.metrics_port)
    run_parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    namespaces = None if args.all_namespaces else tuple(args.namespaces or ()) or defaults.namespaces
    settings = replace(
        defaults, namespaces=namespaces, liveness_port=args.liveness_port, metrics_port=args.metrics_port
    )
    return settings, args.verbose


def main(argv: Sequence[str] | None = None, prog: str = "quasar operator") -> int:
    settings, verbose = parse(argv, prog)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO)
    start_http_server(settings.metrics_port)
    asyncio.run(run(settings))
    return 0
