"""One client's side of one round: it answers the server's four stages in order.

The client generates two X25519 key pairs (``c`` to encrypt shares to its neighbours, ``s``
for pairwise masks) and a self-mask seed ``b``; it shares ``b`` and ``s``'s secret key among
itself and its neighbours (Shamir, threshold ``t``); it sends its input masked by
``PRG(b) + sum_v +-PRG(agree(s_u, s_v))``; and at the end it reveals, for each neighbour, the
share of ``b`` (the neighbour sent its input) or of ``s`` (it did not), never both. Every
server message is checked: a message that is malformed, out of order, or that asks for what
would reveal an input raises :class:`~fedloom.core.errors.ClientError` and the client says
nothing more this round.
"""

from __future__ import annotations

import os

from fedloom.core.errors import ClientError
from fedloom.secagg import crypto, shamir
from fedloom.secagg.config import Quantizer
from fedloom.secagg.graph import majority
from fedloom.secagg.messages import (
    CIPHER_BYTES,
    KEY_BYTES,
    BadMessage,
    Content,
    Stage,
    bytes_tensor,
    get_float,
    get_ids,
    get_int,
    get_rows,
    ids_tensor,
    pack_shares,
    unpack_shares,
)
from fedloom.secagg.ring import Ring, add, sub, wire

MAX_SIZE = 1 << 32


def mask_key(secret: bytes, public: bytes, round: int) -> bytes:
    return crypto.agree(secret, public, b"mask/%d" % round)


def share_key(secret: bytes, public: bytes, round: int) -> bytes:
    return crypto.agree(secret, public, b"shares/%d" % round)


class ClientSession:
    """Client ``client_id``'s protocol state for one round; its input comes from
    :meth:`set_input` (before the masked-input stage)."""

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.stage: Stage | None = None
        self._input: Ring | None = None

    def set_input(self, vector: Ring) -> None:
        self._input = vector

    def handle(self, stage: Stage, message: Content) -> Content:
        """The reply to the server's message of ``stage``."""
        order = [None, Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK]
        if stage not in order or order.index(stage) != order.index(self.stage) + 1:
            raise ClientError(f"secure aggregation: {stage} after {self.stage or 'nothing'}",
                              client_id=self.client_id, stage=str(stage))
        try:
            reply = getattr(self, "_" + stage.value)(message)
        except (BadMessage, crypto.CryptoError, shamir.ShareError) as err:
            raise ClientError(f"secure aggregation refused the server's message: {err}",
                              client_id=self.client_id, stage=str(stage)) from None
        self.stage = stage
        return reply  # type: ignore[no-any-return]

    def _advertise_keys(self, m: Content) -> Content:
        self.round = get_int(m, "round", 0, 1 << 62)
        ring_bits = get_int(m, "ring_bits", 16, 64)
        quant_bits = get_int(m, "quant_bits", 2, min(32, ring_bits - 8))
        self.quantizer = Quantizer(clip_range=get_float(m, "clip_range"),
                                   quant_bits=quant_bits, ring_bits=ring_bits)
        self.size = get_int(m, "size", 2, MAX_SIZE)
        self.neighbours = set(get_ids(m, "neighbours"))
        self.neighbours.discard(self.client_id)
        holders = len(self.neighbours) + 1
        self.threshold = get_int(m, "threshold", max(2, majority(holders)), holders)
        self.c_sk, c_pk = crypto.keypair()
        self.s_sk, s_pk = crypto.keypair()
        return {"c_pk": bytes_tensor([c_pk], KEY_BYTES)[0],
                "s_pk": bytes_tensor([s_pk], KEY_BYTES)[0]}

    def _share_keys(self, m: Content) -> Content:
        ids = get_ids(m, "ids", self.neighbours)
        c_pks = get_rows(m, "c_pks", len(ids), KEY_BYTES)
        s_pks = get_rows(m, "s_pks", len(ids), KEY_BYTES)
        if len(set(c_pks + s_pks)) != 2 * len(ids):
            raise BadMessage("two public keys are equal")
        if len(ids) + 1 < self.threshold:
            raise BadMessage(f"{len(ids)} neighbours advertised keys; {self.threshold - 1} "
                             "are needed to hold the shares")
        self.c_pks, self.s_pks = dict(zip(ids, c_pks)), dict(zip(ids, s_pks))
        self.b_seed = os.urandom(shamir.SECRET_BYTES)
        holders = [self.client_id + 1] + [v + 1 for v in ids]
        b_sh = shamir.split(self.b_seed, threshold=self.threshold, holders=holders)
        s_sh = shamir.split(self.s_sk, threshold=self.threshold, holders=holders)
        self.b_shares = {self.client_id: b_sh[self.client_id + 1]}
        self.s_shares = {self.client_id: s_sh[self.client_id + 1]}
        ciphers = []
        for v in ids:
            plain = pack_shares(self.client_id, v, b_sh[v + 1], s_sh[v + 1])
            key = share_key(self.c_sk, self.c_pks[v], self.round)
            ciphers.append(crypto.encrypt(key, plain, crypto.associated(
                self.round, self.client_id, v)))
        return {"to": ids_tensor(ids), "ciphers": bytes_tensor(ciphers, CIPHER_BYTES)}

    def _masked_input(self, m: Content) -> Content:
        if self._input is None or self._input.shape != (self.size,):
            raise BadMessage(f"this client has no input of {self.size} values to send")
        senders = get_ids(m, "from", set(self.c_pks))
        ciphers = get_rows(m, "ciphers", len(senders), CIPHER_BYTES)
        if len(senders) + 1 < self.threshold:
            raise BadMessage(f"only {len(senders)} neighbours shared keys; {self.threshold - 1} "
                             "are needed")
        for v, cipher in zip(senders, ciphers):
            key = share_key(self.c_sk, self.c_pks[v], self.round)
            plain = crypto.decrypt(key, cipher, crypto.associated(self.round, v, self.client_id))
            sender, receiver, b_share, s_share = unpack_shares(plain)
            if (sender, receiver) != (v, self.client_id):
                raise BadMessage(f"the shares from client {v} name {sender} -> {receiver}")
            self.b_shares[v], self.s_shares[v] = b_share, s_share
        self.senders = set(senders)
        bits = self.quantizer.ring_bits
        masked = add(self._input, crypto.expand(self.b_seed, self.size, bits), bits)
        for v in senders:
            pairwise = crypto.expand(mask_key(self.s_sk, self.s_pks[v], self.round),
                                     self.size, bits)
            masked = add(masked, pairwise, bits) if self.client_id < v \
                else sub(masked, pairwise, bits)
        self._input = None  # the unmasked vector is no longer needed
        return {"masked": wire(masked)}

    def _unmask(self, m: Content) -> Content:
        known = self.senders | {self.client_id}
        alive = get_ids(m, "alive", known)
        dropped = get_ids(m, "dropped", known)
        if set(alive) & set(dropped) or set(alive) | set(dropped) != known \
                or self.client_id not in alive:
            raise BadMessage("alive and dropped must split this client and the neighbours "
                             "that shared keys with it, with this client alive")
        if len(alive) < self.threshold:
            raise BadMessage(f"{len(alive)} clients alive, below the threshold "
                             f"{self.threshold}")
        return {"b_ids": ids_tensor(alive),
                "b_shares": bytes_tensor([self.b_shares[v] for v in alive], shamir.SHARE_BYTES),
                "s_ids": ids_tensor(dropped),
                "s_shares": bytes_tensor([self.s_shares[v] for v in dropped],
                                         shamir.SHARE_BYTES)}


__all__ = ["ClientSession", "mask_key", "share_key"]
