"""How a FedLab-style message travels between two ranks: a header, then a body.

The *header* is four int64 numbers ``[MAGIC, code, body_len, count]`` sent point to point with
tag :data:`HEADER_TAG`; a receiver that accepts any sender matches headers only, so it can
never take another message's body for a header. The *body* (tag :data:`BODY_TAG`, from the
sender the header named) is one uint8 tensor made by :func:`fedloom.fleets.dist_wire.pack`:
a JSON part ``{"code": code}`` and the content tensors, each with its own dtype and shape.
Nothing is pickled; a message with no tensors has no body.

Every field is checked on arrival; a bad one is a :class:`MessageError` naming the sender, the
code and what was wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedloom.fleets.dist_wire import pack, unpack
from fedloom.runtime.fedlab.codes import MessageCode, MessageError

#: "fedlab" in ASCII: a header that does not start with it is not one of ours
MAGIC = 0x6665646C6162
HEADER_SIZE = 4
HEADER_TAG = 5101
BODY_TAG = 5102
#: the largest body a receiver allocates (16 GiB); a header asking for more is refused
MAX_BODY_BYTES = 1 << 34

Content = torch.Tensor | Sequence[torch.Tensor] | None


def as_tensor_list(content: Content) -> list[torch.Tensor]:
    """FedLab's content forms (None, one tensor, a list of tensors) as a list."""
    if content is None:
        return []
    items = [content] if isinstance(content, torch.Tensor) else list(content)
    for i, item in enumerate(items):
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"DistNetwork.send: content[{i}] is a {type(item).__name__}; "
                            "content must be a tensor or a list of tensors")
    return items


def as_code(message_code: MessageCode | int | None) -> MessageCode:
    """``message_code`` as a :class:`MessageCode`; None or an unknown value is refused."""
    if message_code is None:
        raise ValueError("DistNetwork.send: message_code is None; give a MessageCode")
    try:
        return MessageCode(int(message_code))
    except ValueError:
        raise ValueError(f"DistNetwork.send: message_code = {message_code!r} is not a "
                         f"MessageCode ({', '.join(c.name for c in MessageCode)})") from None


def encode(code: MessageCode, tensors: Sequence[torch.Tensor],
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The header (on the CPU) and the body (on ``device``; None without tensors)."""
    body = pack({"code": int(code)}, [t.detach() for t in tensors], device) if tensors else None
    size = 0 if body is None else body.numel()
    return torch.tensor([MAGIC, int(code), size, len(tensors)], dtype=torch.int64), body


def decode_header(header: torch.Tensor, *, sender: int,
                  receiver: int) -> tuple[MessageCode, int, int]:
    """``(code, body_len, count)`` of a received header, checked."""
    magic, raw_code, body_len, count = (int(v) for v in header.tolist())
    if magic != MAGIC:
        raise MessageError(f"not a fedloom FedLab header (magic {magic:#x}, expected "
                           f"{MAGIC:#x}); is the peer another program or version?",
                           sender=sender, code=raw_code, receiver=receiver)
    try:
        code = MessageCode(raw_code)
    except ValueError:
        raise MessageError("unknown message code", sender=sender, code=raw_code,
                           receiver=receiver) from None
    if count < 0 or body_len < 0 or (count == 0) != (body_len == 0) \
            or body_len > MAX_BODY_BYTES:
        raise MessageError(f"bad header: {count} tensors in a body of {body_len} bytes "
                           f"(at most {MAX_BODY_BYTES})", sender=sender, code=code,
                           receiver=receiver)
    return code, body_len, count


def decode_body(body: torch.Tensor, *, code: MessageCode, count: int, sender: int,
                receiver: int) -> list[torch.Tensor]:
    """The content tensors of a received body (views of it), checked against the header."""
    try:
        meta, tensors = unpack(body)
        body_code = meta["code"] if isinstance(meta, dict) else None
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
        raise MessageError(f"unreadable body of {body.numel()} bytes: {err}", sender=sender,
                           code=code, receiver=receiver) from err
    if body_code != int(code):
        raise MessageError(f"the body says code {body_code!r}, the header {int(code)}",
                           sender=sender, code=code, receiver=receiver)
    if len(tensors) != count:
        raise MessageError(f"the header announced {count} tensors, the body holds "
                           f"{len(tensors)}", sender=sender, code=code, receiver=receiver)
    return tensors
