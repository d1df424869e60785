"""The server's side of one round: route keys and ciphertexts, sum the masked inputs, and
remove the masks with the shares the survivors reveal.

Clients that do not answer a stage, or answer it with a malformed message, are dropped from
that stage on (recorded in :attr:`ServerSession.dropped` with the stage and the reason); a
client whose neighbours have dropped below the threshold is dropped too. When fewer than
``threshold`` clients are left after a stage, or a mask cannot be removed, the round is
aborted with :class:`~fedloom.core.errors.RoundAborted` naming the stage and the reason. The
server never sees an input that is not masked: the result is only the sum.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import numpy as np
import torch

from fedloom.core.errors import AggregationError, RoundAborted
from fedloom.secagg import crypto, shamir
from fedloom.secagg.client import mask_key
from fedloom.secagg.graph import RoundSetup
from fedloom.secagg.messages import (
    CIPHER_BYTES,
    KEY_BYTES,
    BadMessage,
    Content,
    Stage,
    bytes_tensor,
    get_ids,
    get_rows,
    ids_tensor,
)
from fedloom.secagg.ring import Ring, add, decode_sum, from_wire, sub

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class SecureSum:
    """What the server learns: ``sum_k n_k x_k`` (float64, up to quantisation), ``sum_k n_k``
    and which clients' inputs are in it."""

    total: torch.Tensor
    count: int
    clients: tuple[int, ...]


class ServerSession:
    """The server's state for one round (the stages are called in order)."""

    def __init__(self, setup: RoundSetup) -> None:
        self.setup = setup
        self.t = setup.threshold
        self.dropped: dict[int, tuple[Stage, str]] = {}
        self.alive: list[int] = setup.cohort
        self.c_pks: dict[int, bytes] = {}
        self.s_pks: dict[int, bytes] = {}
        self.ciphers: dict[tuple[int, int], bytes] = {}  # (sender, receiver) -> ciphertext
        self.senders: dict[int, list[int]] = {}  # receiver -> senders whose shares it got
        self.total: Ring | None = None

    # -- stages ------------------------------------------------------------------------------

    def advertise_requests(self) -> dict[int, Content]:
        q = self.setup.quantizer
        return {u: {"round": self.setup.round, "threshold": self.t, "size": self.setup.size,
                    "clip_range": q.clip_range, "quant_bits": q.quant_bits,
                    "ring_bits": q.ring_bits, "neighbours": ids_tensor(self.setup.graph[u])}
                for u in self.alive}

    def collect_keys(self, replies: Mapping[int, Content]) -> dict[int, Content]:
        for u, (c_pk, s_pk) in self._answers(Stage.ADVERTISE_KEYS, replies, _keys).items():
            self.c_pks[u], self.s_pks[u] = c_pk, s_pk
        self._prune(Stage.ADVERTISE_KEYS)
        out: dict[int, Content] = {}
        for u in self.alive:
            ids = self._live_neighbours(u)
            out[u] = {"ids": ids_tensor(ids),
                      "c_pks": bytes_tensor([self.c_pks[v] for v in ids], KEY_BYTES),
                      "s_pks": bytes_tensor([self.s_pks[v] for v in ids], KEY_BYTES)}
        return out

    def collect_shares(self, replies: Mapping[int, Content]) -> dict[int, Content]:
        asked = {u: self._live_neighbours(u) for u in self.alive}

        def parse(u: int, m: Content) -> dict[int, bytes]:
            to = get_ids(m, "to")
            if sorted(to) != asked[u]:
                raise BadMessage(f"'to' names {sorted(to)[:5]}, the keys came from "
                                 f"{asked[u][:5]}")
            return dict(zip(to, get_rows(m, "ciphers", len(to), CIPHER_BYTES)))

        for u, ciphers in self._answers(Stage.SHARE_KEYS, replies, parse).items():
            self.ciphers.update({(u, v): c for v, c in ciphers.items()})
        self._prune(Stage.SHARE_KEYS)
        out: dict[int, Content] = {}
        for u in self.alive:
            self.senders[u] = [v for v in self._live_neighbours(u) if (v, u) in self.ciphers]
            out[u] = {"from": ids_tensor(self.senders[u]),
                      "ciphers": bytes_tensor([self.ciphers[(v, u)] for v in self.senders[u]],
                                              CIPHER_BYTES)}
        return out

    def collect_masked(self, replies: Mapping[int, Content]) -> dict[int, Content]:
        size, bits = self.setup.size, self.setup.quantizer.ring_bits
        total = np.zeros(size, dtype=np.uint64)

        def parse(u: int, m: Content) -> Ring:
            masked = m.get("masked")
            if not isinstance(masked, torch.Tensor):
                raise BadMessage("masked: need an int64 tensor")
            try:
                return from_wire(masked, size, bits)
            except ValueError as err:
                raise BadMessage(f"masked: {err}") from None

        for vector in self._answers(Stage.MASKED_INPUT, replies, parse).values():
            total = add(total, vector, bits)
        self.total = total
        self._check(Stage.MASKED_INPUT)
        alive = set(self.alive)
        return {u: {"alive": ids_tensor(sorted(alive & {u, *self.senders[u]})),
                    "dropped": ids_tensor(sorted(set(self.senders[u]) - alive))}
                for u in self.alive}

    def collect_unmask(self, replies: Mapping[int, Content]) -> SecureSum:
        inputs, alive = list(self.alive), set(self.alive)
        b_shares: dict[int, dict[int, bytes]] = {}
        s_shares: dict[int, dict[int, bytes]] = {}
        def parse(u: int, m: Content) -> tuple[dict[int, bytes], dict[int, bytes]]:
            known = {u, *self.senders[u]}
            b_ids = get_ids(m, "b_ids", known & alive)
            s_ids = get_ids(m, "s_ids", known - alive)
            return (dict(zip(b_ids, get_rows(m, "b_shares", len(b_ids), shamir.SHARE_BYTES))),
                    dict(zip(s_ids, get_rows(m, "s_shares", len(s_ids), shamir.SHARE_BYTES))))

        for u, (bs, ss) in self._answers(Stage.UNMASK, replies, parse, keep_alive=True).items():
            for v, share in bs.items():
                b_shares.setdefault(v, {})[u + 1] = share
            for v, share in ss.items():
                s_shares.setdefault(v, {})[u + 1] = share
        assert self.total is not None
        bits, size = self.setup.quantizer.ring_bits, self.setup.size
        total = self.total
        for v in inputs:
            seed = self._rebuild(v, b_shares.get(v, {}), "self-mask seed")
            total = sub(total, crypto.expand(seed, size, bits), bits)
        for v in sorted({v for u in inputs for v in self.senders[u]} - alive):
            s_sk = self._rebuild(v, s_shares.get(v, {}), "mask key")
            if crypto.public_key(s_sk) != self.s_pks[v]:
                self._abort(Stage.UNMASK, f"client {v}'s rebuilt mask key does not match "
                                          "its public key (a client sent a bad share)")
            for u in inputs:
                if v in self.senders[u]:  # u added +-PRG(agree(s_u, s_v)) for v: take it out
                    pairwise = crypto.expand(mask_key(s_sk, self.s_pks[u], self.setup.round),
                                             size, bits)
                    total = sub(total, pairwise, bits) if u < v else add(total, pairwise, bits)
        try:
            summed, count = decode_sum(total, self.setup.quantizer)
        except AggregationError as err:
            self._abort(Stage.UNMASK, str(err))
        return SecureSum(total=summed, count=count, clients=tuple(inputs))

    # -- bookkeeping --------------------------------------------------------------------------

    def _answers(self, stage: Stage, replies: Mapping[int, Content],
                 parse: Callable[[int, Content], T], *, keep_alive: bool = False) -> dict[int, T]:
        """The parsed replies of the clients still in; a client that did not answer, or
        whose reply ``parse`` rejects (BadMessage), is dropped (``keep_alive``: its input
        stays in the sum, only its answer is missing)."""
        good: dict[int, T] = {}
        for u in list(self.alive):
            if u not in replies:
                self._drop(u, stage, "no reply", keep_alive)
                continue
            try:
                good[u] = parse(u, replies[u])
            except BadMessage as err:
                self._drop(u, stage, f"bad reply: {err}", keep_alive)
        return good

    def _drop(self, u: int, stage: Stage, reason: str, keep_alive: bool = False) -> None:
        self.dropped.setdefault(u, (stage, reason))
        if not keep_alive and u in self.alive:
            self.alive.remove(u)

    def _live_neighbours(self, u: int) -> list[int]:
        alive = set(self.alive)
        return [v for v in self.setup.graph[u] if v in alive]

    def _prune(self, stage: Stage) -> None:
        """Drop clients with fewer than ``t - 1`` live neighbours until none is left."""
        changed = True
        while changed:
            changed = False
            for u in list(self.alive):
                if len(self._live_neighbours(u)) + 1 < self.t:
                    self._drop(u, stage, f"fewer than {self.t - 1} of its neighbours are left")
                    changed = True
        self._check(stage)

    def _check(self, stage: Stage) -> None:
        if len(self.alive) < self.t:
            self._abort(stage, f"only {len(self.alive)} clients are left, the threshold is "
                               f"{self.t}")

    def _rebuild(self, v: int, shares: dict[int, bytes], what: str) -> bytes:
        try:
            secret = shamir.combine(shares, threshold=self.t)
            if len(shares) > self.t:  # a second subset must give the same secret
                rest = dict(sorted(shares.items())[-self.t:])
                if shamir.combine(rest, threshold=self.t) != secret:
                    raise shamir.ShareError("two subsets of the shares disagree")
        except shamir.ShareError as err:
            self._abort(Stage.UNMASK, f"client {v}'s {what} cannot be rebuilt: {err}")
        return secret

    def _abort(self, stage: Stage, reason: str) -> NoReturn:
        raise RoundAborted(f"secure aggregation failed: {reason}", round=self.setup.round,
                           stage=f"secagg/{stage}")


def _keys(u: int, m: Content) -> tuple[bytes, bytes]:
    keys = []
    for name in ("c_pk", "s_pk"):
        t = m.get(name)
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 \
                or tuple(t.shape) != (KEY_BYTES,):
            raise BadMessage(f"{name}: need {KEY_BYTES} uint8 values")
        keys.append(t.numpy().tobytes())
    return keys[0], keys[1]


__all__ = ["SecureSum", "ServerSession"]
