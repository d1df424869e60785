"""The committed gRPC code is what the .proto generates (the check `make check` runs)."""

from __future__ import annotations

import pytest

from fedloom.transport import codegen


def test_the_committed_generated_code_is_fresh() -> None:
    pytest.importorskip("grpc_tools")
    assert codegen.stale_files() == []
