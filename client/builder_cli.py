"""`layercache key | plan | why | build`: the builder plugin on the command line.

    layercache key DOCKERFILE_DIR              each step and its key (no daemon)
    layercache plan DOCKERFILE_DIR             which steps would hit; exit 3 if any misses
    layercache why DOCKERFILE_DIR [STEP]       why STEP (default: the first miss) misses
    layercache build DOCKERFILE_DIR -o LAYOUT  build an OCI image layout through the cache

All take -f/--file (the Dockerfile's name in DOCKERFILE_DIR, which is also the
context) and --build-arg NAME=VALUE; the daemon commands take --server and
--namespace (default $LAYERCACHE_NAMESPACE, else "builds"). ``register`` adds
them to the main CLI's subparsers; each handler returns the exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from client.builder import BuildError, LayoutResolver, build
from client.client import Client
from client.connection import add_connection_options, connect
from client.context import ContextError
from client.dockerfile import DockerfileError
from client.keys import KeyChain, compute
from client.plugin import DEFAULT_NAMESPACE, BuilderPlugin

EXIT_INVALID = 2
EXIT_MISS = 3


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str, daemon: bool) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subparsers.add_parser(name, help=help, description=help)
        parser.set_defaults(func=_guarded(handler))
        parser.add_argument("dockerfile_dir", metavar="DOCKERFILE_DIR", help="directory holding the Dockerfile; also the build context")
        parser.add_argument("-f", "--file", default="Dockerfile", help="Dockerfile name inside DOCKERFILE_DIR")
        parser.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE", dest="build_args")
        if daemon:
            add_connection_options(parser)
            parser.add_argument(
                "--namespace",
                default=os.environ.get("LAYERCACHE_NAMESPACE", DEFAULT_NAMESPACE),
                help="instruction-cache namespace (default: %(default)s)",
            )
        return parser

    command("key", _cmd_key, "print each step of a Dockerfile and its instruction-cache key", daemon=False)
    command("plan", _cmd_plan, "show which steps would hit the cache; exit 3 if any misses", daemon=True)
    why = command("why", _cmd_why, "explain why a step misses, against the nearest recorded entry", daemon=True)
    why.add_argument("step", nargs="?", type=int, metavar="STEP", help="step number as `key` prints it (default: the first miss)")
    built = command("build", _cmd_build, "build an OCI image layout, reusing every cached step", daemon=True)
    built.add_argument("-o", "--output", required=True, metavar="OCI_LAYOUT_DIR")
    built.add_argument("-t", "--tag", default="latest", help="ref name in the layout's index (default: %(default)s)")


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turns Dockerfile, context and build errors into a message and an exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (DockerfileError, ContextError) as exc:
            print(f"layercache: {exc}", file=sys.stderr)
            return EXIT_INVALID
        except BuildError as exc:
            print(f"layercache: build failed: {exc}", file=sys.stderr)
            return 1

    return run


def _build_args(args: argparse.Namespace) -> dict[str, str]:
    pairs = {}
    for item in args.build_args:
        name, sep, value = item.partition("=")
        if sep:
            pairs[name] = value
        elif name in os.environ:  # as with docker build, a bare NAME takes its value from the environment
            pairs[name] = os.environ[name]
    return pairs


def _chain(args: argparse.Namespace) -> KeyChain:
    return compute(args.dockerfile_dir, _build_args(args), LayoutResolver(args.dockerfile_dir), dockerfile=args.file)


def _plugin(args: argparse.Namespace, client: Client) -> BuilderPlugin:
    return BuilderPlugin(client, args.namespace, LayoutResolver(args.dockerfile_dir))


def _cmd_key(args: argparse.Namespace) -> int:
    for step in _chain(args).steps:
        print(f"{step.index:>3}  {step.key}  {step.text}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    with connect(args) as client:
        plugin = _plugin(args, client)
        chain = _chain(args)
        status = plugin.lookup_chain(chain)
    for step in chain.steps:
        print(f"{step.index:>3}  {'hit ' if step.index <= len(status.hits) else 'miss'}  {step.key}  {step.text}")
    return 0 if status.first_miss is None else EXIT_MISS


def _cmd_why(args: argparse.Namespace) -> int:
    with connect(args) as client:
        plugin = _plugin(args, client)
        chain = _chain(args)
        number = args.step
        if number is None:
            number = plugin.lookup_chain(chain).first_miss
            if number is None:
                print("every step hits")
                return 0
        if not 1 <= number <= len(chain.steps):
            print(f"layercache: step {number} does not exist (1-{len(chain.steps)})", file=sys.stderr)
            return EXIT_INVALID
        print(plugin.explain(chain, number).render(), end="")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    with connect(args) as client:
        result = build(
            client,
            args.dockerfile_dir,
            args.output,
            namespace=args.namespace,
            build_args=_build_args(args),
            tag=args.tag,
            dockerfile=args.file,
            log=lambda line: print(line, flush=True),
        )
    print(result.image_digest)
    return 0

