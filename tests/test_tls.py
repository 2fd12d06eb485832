"""TLS on a real daemon: a client with the CA connects, others fail cleanly.

Certificates are made here with `cryptography`: a throwaway CA, a server
certificate for 127.0.0.1, and a client certificate for mutual TLS.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client import Client
from client.errors import UnavailableError
from tests.conftest import REPO, DaemonProcess


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def make_ca(directory: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def issue(directory: Path, name: str, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], server: bool) -> None:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, directory / f"{name}.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "ca")
    issue(directory, "server", ca, server=True)
    issue(directory, "client", ca, server=False)
    make_ca(directory, "other-ca")
    return directory


def start(tmp_path: Path, pki: Path, *, client_ca: bool = False) -> DaemonProcess:
    config = tmp_path / "layercache.toml"
    lines = ["[server]", f'tls_cert = "{pki / "server.pem"}"', f'tls_key = "{pki / "server.key"}"']
    if client_ca:
        lines.append(f'tls_client_ca = "{pki / "ca.pem"}"')
    config.write_text("\n".join(lines) + "\n")
    return DaemonProcess(tmp_path / "data", tmp_path, ["--config", str(config), "--metrics-listen", "127.0.0.1:0"]).start()


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory, pki):
    proc = start(tmp_path_factory.mktemp("tls"), pki)
    yield proc
    proc.stop()


def test_a_client_trusting_the_ca_connects_and_round_trips(tls_daemon, pki):
    with Client(tls_daemon.address, tls_ca=pki / "ca.pem", timeout=30) as client:
        desc = client.put(b"over tls" * 1000)
        assert client.get(desc.digest) == b"over tls" * 1000
        assert client.capabilities().max_blob_size > 0


@pytest.mark.parametrize("options", [{}, {"tls_ca": "other-ca.pem"}])
def test_plaintext_or_untrusting_clients_fail_cleanly(tls_daemon, pki, options):
    options = {k: pki / v for k, v in options.items()}
    with Client(tls_daemon.address, timeout=5, **options) as client:
        with pytest.raises(UnavailableError):
            client.capabilities()
    assert tls_daemon.process.poll() is None  # the daemon shrugged it off
    with Client(tls_daemon.address, tls_ca=pki / "ca.pem", timeout=30) as client:
        client.capabilities()


def test_the_metrics_endpoint_serves_https_with_the_same_files(tls_daemon, pki):
    port = next(line for line in tls_daemon.lines if "serving metrics" in line).rsplit(":", 1)[1].strip()
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=context, timeout=30) as response:
        assert b"layercache_stored_bytes" in response.read()


def test_the_oci_endpoint_serves_https_with_the_same_files(tls_daemon, pki):
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with urllib.request.urlopen(f"https://{tls_daemon.http_address}/v2/", context=context, timeout=30) as response:
        assert response.status == 200
    with pytest.raises(OSError):  # plaintext HTTP gets no answer it can use
        urllib.request.urlopen(f"http://{tls_daemon.http_address}/v2/", timeout=10)


def test_client_certificates_are_required_when_a_client_ca_is_configured(tmp_path, pki):
    daemon = start(tmp_path, pki, client_ca=True)
    try:
        with Client(daemon.address, tls_ca=pki / "ca.pem", timeout=5) as anonymous:
            with pytest.raises(UnavailableError):
                anonymous.capabilities()
        with Client(
            daemon.address, tls_ca=pki / "ca.pem", tls_cert=pki / "client.pem", tls_key=pki / "client.key", timeout=30
        ) as client:
            assert client.capabilities().max_blob_size > 0
    finally:
        daemon.stop()


def test_a_missing_certificate_file_stops_the_daemon_with_a_clear_error(tmp_path, pki):
    config = tmp_path / "bad.toml"
    config.write_text(f'[server]\ntls_cert = "{tmp_path / "nope.pem"}"\ntls_key = "{pki / "server.key"}"\n')
    run = subprocess.run(
        [sys.executable, "-m", "client.cli", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"),
         "--config", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 2
    assert "server.tls_cert" in run.stderr and "not a readable file" in run.stderr
