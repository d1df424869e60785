"""Deployment tests run servers and clients on 127.0.0.1; gRPC's C core stays quiet."""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
