"""The client package stays independent of the daemon and exports a stable surface."""

import subprocess
import sys

import client


def test_importing_the_client_loads_no_daemon_code():
    probe = (
        "import sys, client, client.cli; "
        "bad = sorted(m for m in sys.modules if m == 'lmdb' or m.startswith('cached')); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names():
    assert sorted(client.__all__) == sorted(
        [
            "BlobInfo",
            "CacheEntry",
            "Client",
            "DataLossError",
            "Descriptor",
            "FailedPreconditionError",
            "InvalidArgumentError",
            "LayercacheError",
            "LookupResult",
            "NotFoundError",
            "OutOfRangeError",
            "PermissionDeniedError",
            "ResourceExhaustedError",
            "ServerError",
            "Stats",
            "UnauthenticatedError",
            "UnavailableError",
            "VerifyReport",
            "default_server",
        ]
    )
    for name in client.__all__:
        assert getattr(client, name) is not None
