"""`quasar operator run`: the operator in this process, kopf's event loop with QUASAR's handlers."""

import argparse
import asyncio
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace

import kopf
import yaml
from prometheus_client import start_http_server

from evaluation.cli import SubcommandParser
from quasar_operator.handlers import build_registry, configure, find_credentials, looked_for
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
        liveness_endpoint=f"http://{settings.listen_address}:{settings.liveness_port}/healthz",
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def parse(
    argv: Sequence[str] | None, prog: str, env: Mapping[str, str] | None = None
) -> tuple[Settings, bool]:
    """The settings (the environment's, overridden by the flags) and whether to log at debug level."""
    parser = argparse.ArgumentParser(prog=prog, description="The QUASAR Kubernetes operator.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=SubcommandParser)
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
    run_parser.add_argument(
        "--wait-for-cluster",
        action="store_true",
        help="with no cluster credentials, keep retrying the login instead of exiting",
    )
    args = parser.parse_args(argv)
    namespaces = None if args.all_namespaces else tuple(args.namespaces or ()) or defaults.namespaces
    settings = replace(
        defaults,
        namespaces=namespaces,
        liveness_port=args.liveness_port,
        metrics_port=args.metrics_port,
        wait_for_cluster=args.wait_for_cluster,
    )
    return settings, args.verbose


def no_cluster() -> str | None:
    """None when there are credentials to log in with; otherwise why not, on one line."""
    try:
        if find_credentials(kopf.OperatorSettings()) is not None:
            return None
        problems = looked_for()
    except (OSError, LookupError, ValueError, TypeError, yaml.YAMLError) as exc:
        # KUBECONFIG names a file that is missing or not a kubeconfig.
        problems = [f"the kubeconfig could not be read ({exc})"]
    return f"no Kubernetes cluster found: {'; '.join(problems)}"


def main(argv: Sequence[str] | None = None, prog: str = "quasar operator") -> int:
    settings, verbose = parse(argv, prog)
    problem = None if settings.wait_for_cluster else no_cluster()
    if problem is not None:
        print(f"{prog}: {problem} (--wait-for-cluster waits for one)", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO)
    start_http_server(settings.metrics_port, addr=settings.listen_address)
    asyncio.run(run(settings))
    return 0
