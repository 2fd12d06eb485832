"""The command-line options every daemon-talking command shares, and the Client they make."""

from __future__ import annotations

import argparse
from pathlib import Path

from client.client import Client, default_server


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """--server, --token and the TLS flags; `connect` turns them into a Client."""
    parser.add_argument("--server", default=default_server(), help="daemon address HOST:PORT (default: %(default)s)")
    parser.add_argument("--token", help="bearer token (default: $LAYERCACHE_TOKEN)")
    parser.add_argument("--tls", action="store_true", help="use TLS, trusting the system's CAs")
    parser.add_argument("--tls-ca", type=Path, help="use TLS, trusting this CA certificate (PEM)")
    parser.add_argument("--tls-cert", type=Path, help="client certificate (PEM) for daemons that require one")
    parser.add_argument("--tls-key", type=Path, help="key of --tls-cert (PEM)")


def connect(args: argparse.Namespace) -> Client:
    return Client(
        args.server, token=args.token, tls=args.tls, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key
    )
