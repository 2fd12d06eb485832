"""The committed generated modules match what protos/ generates today."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_generated_code_is_not_stale(tmp_path):
    spec = importlib.util.spec_from_file_location("generate", REPO / "protos" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    produced = generate.generate(tmp_path)
    assert produced, "the generator wrote nothing"
    for path in produced:
        committed = REPO / "client" / "proto" / path.name
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run python protos/generate.py"
