"""The gRPC method both sides use and the channel/server options they share."""

from __future__ import annotations

SERVICE = "fedloom.v1.Federation"
METHOD = f"/{SERVICE}/Join"
HEADROOM = 2 << 20  # room for a header beside a full chunk in one gRPC message


def grpc_options(chunk_bytes: int, keepalive_ms: int = 30_000) -> list[tuple[str, int]]:
    """Message limits (a chunk plus headroom: models themselves stream in chunks), keepalive
    pings to notice dead peers, and no SO_REUSEPORT (two servers must not share a port)."""
    return [("grpc.max_receive_message_length", chunk_bytes + HEADROOM),
            ("grpc.max_send_message_length", chunk_bytes + HEADROOM),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_time_ms", keepalive_ms), ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.http2.max_ping_strikes", 0)]
