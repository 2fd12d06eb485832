"""Regenerates the Python protobuf/gRPC modules in client/proto/ from protos/.

The generated modules are committed so that installing layercache needs no
code generation; tests/test_proto_fresh.py regenerates into a temporary
directory and fails when the committed copy is stale.

    python protos/generate.py            # rewrite client/proto/
    python protos/generate.py OUT_DIR    # write elsewhere (used by the test)
"""

from __future__ import annotations

import pathlib
import re
import sys

from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = PROTO_ROOT.parent / "client" / "proto"
PROTO_FILES = ["layercache/v1/layercache.proto"]
# protoc writes absolute imports ("from layercache.v1 import x_pb2"); the
# modules live in a package of ours, so they must import each other relatively.
_ABSOLUTE_IMPORT = re.compile(r"^from layercache\.v1 import ", re.MULTILINE)


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = out_dir / "_gen"
    scratch.mkdir(exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={scratch}",
        f"--pyi_out={scratch}",
        f"--grpc_python_out={scratch}",
        *[str(PROTO_ROOT / name) for name in PROTO_FILES],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for produced in sorted((scratch / "layercache" / "v1").iterdir()):
        text = _ABSOLUTE_IMPORT.sub("from . import ", produced.read_text())
        target = out_dir / produced.name
        target.write_text(text)
        written.append(target)
        produced.unlink()
    for leftover in sorted(scratch.rglob("*"), reverse=True):
        leftover.rmdir()
    scratch.rmdir()
    return written


if __name__ == "__main__":
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in generate(out):
        print(path)
