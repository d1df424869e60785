"""The protocol's messages: flat mappings of numbers and tensors (bytes travel as ``uint8``
tensors), the same in memory and on the wire, and readers that check every field of one.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from enum import StrEnum

import torch

from fedloom.secagg.crypto import KEY_BYTES, NONCE_BYTES, TAG_BYTES
from fedloom.secagg.shamir import SHARE_BYTES

Value = float | int | str | bool | torch.Tensor
Content = Mapping[str, Value]

#: a share-keys ciphertext: nonce, (sender, receiver, share of b, share of s_sk), tag
PLAIN_BYTES = 16 + 2 * SHARE_BYTES
CIPHER_BYTES = NONCE_BYTES + PLAIN_BYTES + TAG_BYTES


class Stage(StrEnum):
    """The protocol's stages, in order (``train`` only where clients train first and keep
    their update, as deployed clients do)."""

    TRAIN = "train"
    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    UNMASK = "unmask"


PROTOCOL_STAGES = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)


class BadMessage(ValueError):
    """A message field that is missing or malformed; the text names the field."""


def content_bytes(content: Content) -> int:
    """The payload a message carries: tensor bytes plus 8 per scalar (text by length)."""
    total = 0
    for value in content.values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, str):
            total += len(value.encode())
        else:
            total += 8
    return total


def ids_tensor(ids: list[int] | tuple[int, ...]) -> torch.Tensor:
    return torch.tensor(list(ids), dtype=torch.int64)


def bytes_tensor(rows: list[bytes], width: int) -> torch.Tensor:
    data = b"".join(rows)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(len(rows), width) \
        if rows else torch.empty((0, width), dtype=torch.uint8)


def get_int(content: Content, key: str, low: int, high: int) -> int:
    value = content.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadMessage(f"{key} = {repr(value)[:40]}: need an integer in [{low}, {high}]")
    return value


def get_float(content: Content, key: str) -> float:
    value = content.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 \
            or value == float("inf"):
        raise BadMessage(f"{key} = {repr(value)[:40]}: need a finite number > 0")
    return float(value)


def get_ids(content: Content, key: str, allowed: set[int] | None = None) -> list[int]:
    """Distinct client ids (an int64 vector), all in ``allowed`` when given."""
    t = content.get(key)
    if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.dim() != 1:
        raise BadMessage(f"{key}: need a 1-D int64 tensor of client ids")
    ids = [int(x) for x in t.tolist()]
    if len(set(ids)) != len(ids):
        raise BadMessage(f"{key}: a client id appears twice")
    if allowed is not None and not set(ids) <= allowed:
        raise BadMessage(f"{key}: ids {sorted(set(ids) - allowed)[:5]} are not allowed here")
    return ids


def get_rows(content: Content, key: str, count: int, width: int) -> list[bytes]:
    """``count`` byte strings of ``width`` bytes (a ``count x width`` uint8 tensor)."""
    t = content.get(key)
    if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 \
            or tuple(t.shape) != (count, width):
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise BadMessage(f"{key}: need a {count} x {width} uint8 tensor, got {got}")
    data = t.contiguous().numpy().tobytes()
    return [data[i * width:(i + 1) * width] for i in range(count)]


def pack_shares(sender: int, receiver: int, b_share: bytes, s_share: bytes) -> bytes:
    return struct.pack(">qq", sender, receiver) + b_share + s_share


def unpack_shares(plain: bytes) -> tuple[int, int, bytes, bytes]:
    if len(plain) != PLAIN_BYTES:
        raise BadMessage(f"a decrypted share message has {len(plain)} bytes, need "
                         f"{PLAIN_BYTES}")
    sender, receiver = struct.unpack(">qq", plain[:16])
    return sender, receiver, plain[16:16 + SHARE_BYTES], plain[16 + SHARE_BYTES:]


__all__ = ["CIPHER_BYTES", "KEY_BYTES", "PLAIN_BYTES", "PROTOCOL_STAGES", "BadMessage",
           "Content", "Stage", "Value", "bytes_tensor", "content_bytes", "get_float",
           "get_ids", "get_int", "get_rows", "ids_tensor", "pack_shares", "unpack_shares"]
