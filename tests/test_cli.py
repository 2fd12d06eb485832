"""The `layercache` command against a real daemon: output and exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(*args: str, server: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "client.cli", *args]
    if server:
        command += ["--server", server]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)


def test_put_get_stat_record_lookup_stats_verify(daemon, tmp_path):
    source = Path(os.__file__)
    put = run("put", str(source), "--media-type", "text/x-python", server=daemon.address)
    assert put.returncode == 0, put.stderr
    digest = put.stdout.strip()
    assert digest == "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest()

    out = tmp_path / "copy.py"
    got = run("get", digest, "-o", str(out), server=daemon.address)
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == source.read_bytes()

    stat = run("stat", digest, server=daemon.address)
    assert json.loads(stat.stdout)["descriptor"] == {"digest": digest, "size": source.stat().st_size, "media_type": "text/x-python"}

    recorded = run("record", "team/app", "step-1", digest, "--meta", "instruction=COPY os.py /", server=daemon.address)
    assert recorded.returncode == 0, recorded.stderr

    hit = run("lookup", "team/app", "step-1", server=daemon.address)
    assert hit.returncode == 0 and hit.stdout.startswith(f"HIT  step-1 {digest}")
    miss = run("lookup", "team/app", "step-1", "step-2", "step-3", server=daemon.address)
    assert miss.returncode == 3
    assert "MISS step-2 (not_recorded)" in miss.stdout and "step-3 (after a miss)" in miss.stdout

    stats = json.loads(run("stats", "--json", server=daemon.address).stdout)
    assert (stats["blobs"], stats["records"], stats["lookups"], stats["hits"], stats["misses"]) == (1, 1, 3, 2, 1)
    human = run("stats", server=daemon.address)
    assert "hit rate 66.7%" in human.stdout and "team/app: 1 records" in human.stdout

    verify = run("verify", server=daemon.address)
    assert verify.returncode == 0 and "checked 1 blobs" in verify.stdout


def test_exit_codes_tell_failures_apart(daemon, tmp_path):
    absent = "sha256:" + "0" * 64
    bad = run("stat", "sha256:NOTHEX", server=daemon.address)
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr and "invalid digest" in bad.stderr
    missing = run("get", absent, "-o", str(tmp_path / "x"), server=daemon.address)
    assert missing.returncode == 3 and "NOT_FOUND" in missing.stderr
    assert not (tmp_path / "x").exists()
    assert list(tmp_path.iterdir()) == [], "a failed download leaves no temporary file"
    precondition = run("record", "ns", "k", absent, server=daemon.address)
    assert precondition.returncode == 4 and absent in precondition.stderr
    no_file = run("put", str(tmp_path / "nope"), server=daemon.address)
    assert no_file.returncode == 2 and "No such file" in no_file.stderr


def test_unreachable_server_and_env_default(tmp_path):
    env = {**os.environ, "LAYERCACHE_SERVER": "127.0.0.1:1"}
    down = run("stats", env=env)
    assert down.returncode == 5 and "UNAVAILABLE" in down.stderr


def test_serve_rejects_a_data_dir_in_use(daemon):
    second = subprocess.run(
        [sys.executable, "-m", "client.cli", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(daemon.data_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2 and "in use by another layercache process" in second.stderr


def test_serve_reports_bad_config(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('listen = "nowhere"\n')
    result = subprocess.run(
        [sys.executable, "-m", "client.cli", "serve", "--config", str(config), "--data-dir", str(tmp_path / "d")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "is not HOST:PORT" in result.stderr


def serve_once(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client.cli", "serve", "--listen", "127.0.0.1:0", "--http-listen", "off", "--data-dir", str(data_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_refuses_a_lost_or_damaged_index(daemon_factory):
    daemon = daemon_factory()
    with daemon.client() as client:
        client.put(os.urandom(100_000))
    daemon.stop()
    index = daemon.data_dir / "index"
    (index / "data.mdb").write_bytes(os.urandom(64 * 1024))
    garbage = serve_once(daemon.data_dir)
    assert garbage.returncode == 2 and "cannot be opened" in garbage.stderr, garbage.stderr
    for name in os.listdir(index):
        os.unlink(index / name)
    lost = serve_once(daemon.data_dir)
    assert lost.returncode == 2 and "holds pack files but the index is empty" in lost.stderr, lost.stderr


def test_put_from_a_pipe_and_get_into_special_files(daemon, tmp_path):
    data = Path(os.__file__).read_bytes()
    piped = subprocess.run(
        f"cat {os.__file__} | {sys.executable} -m client.cli put - --server {daemon.address}",
        shell=True, cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert piped.returncode == 0, piped.stderr
    digest = piped.stdout.strip()
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    via_dev_stdin = subprocess.run(
        f"cat {os.__file__} | {sys.executable} -m client.cli put /dev/stdin --server {daemon.address}",
        shell=True, cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert via_dev_stdin.stdout.strip() == digest, via_dev_stdin.stderr

    real = tmp_path / "real.py"
    real.write_text("old")
    link = tmp_path / "link.py"
    link.symlink_to(real)
    assert run("get", digest, "-o", str(link), server=daemon.address).returncode == 0
    assert link.is_symlink() and real.read_bytes() == data  # the link's target was replaced, not the link
    os.mkfifo(tmp_path / "fifo")
    reader = subprocess.Popen(["cat", str(tmp_path / "fifo")], stdout=subprocess.PIPE)
    assert run("get", digest, "-o", str(tmp_path / "fifo"), server=daemon.address).returncode == 0
    assert reader.communicate(timeout=30)[0] == data
    assert run("get", digest, "-o", "/dev/null", server=daemon.address).returncode == 0
    assert Path("/dev/null").is_char_device()


def test_downloads_follow_the_umask(daemon, tmp_path):
    digest = run("put", os.__file__, server=daemon.address).stdout.strip()
    out = tmp_path / "os.py"
    old = os.umask(0o022)
    try:
        assert run("get", digest, "-o", str(out), server=daemon.address).returncode == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


def test_bad_arguments_exit_2(daemon, tmp_path):
    bad_meta = run("record", "ns", "k", "sha256:" + "0" * 64, "--meta", "novalue", server=daemon.address)
    assert bad_meta.returncode == 2 and "expected KEY=VALUE" in bad_meta.stderr and "Traceback" not in bad_meta.stderr
    directory = run("put", str(tmp_path), server=daemon.address)
    assert directory.returncode == 2 and "Is a directory" in directory.stderr
