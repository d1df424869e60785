"""Regenerate (``make proto``) or check (``make check-proto``) the committed gRPC code.

``python -m fedloom.transport.codegen`` runs grpcio-tools' protoc on ``proto/fedloom.proto`` into
``generated/``; with ``--check`` it generates into a temporary directory and fails, naming the
files, when the committed code differs (a ``.proto`` edited without regenerating, or another
grpcio-tools version: the dev extra pins the one the committed code came from).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = "fedloom/transport/generated"  # the import path the generated code uses
FILES = ("fedloom_pb2.py", "fedloom_pb2.pyi", "fedloom_pb2_grpc.py")


def generate(out_root: Path) -> Path:
    """Run protoc; returns the folder the files went to (``out_root/fedloom/...``)."""
    try:
        from grpc_tools import protoc
    except ImportError:
        raise SystemExit("grpcio-tools is not installed: pip install -e '.[dev]'") from None
    args = ["protoc", f"-I{PACKAGE}={HERE / 'proto'}", f"--python_out={out_root}",
            f"--pyi_out={out_root}", f"--grpc_python_out={out_root}", f"{PACKAGE}/fedloom.proto"]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed on fedloom.proto")
    return out_root / PACKAGE


def stale_files() -> list[str]:
    """The committed generated files that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [name for name in FILES
                if not (HERE / "generated" / name).exists()
                or (fresh / name).read_bytes() != (HERE / "generated" / name).read_bytes()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print(f"stale generated gRPC code: {', '.join(stale)} (run `make proto`)",
                  file=sys.stderr)
            return 1
        print("generated gRPC code is up to date")
        return 0
    generate(HERE.parents[1])
    print(f"generated {', '.join(FILES)} in {HERE / 'generated'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
