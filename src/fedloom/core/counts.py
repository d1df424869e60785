"""Every registered client's example count, and shares of them, without a list per client.

A population generated on demand (``data.name=generated``) gives every client the same number
of examples; :class:`Repeated` is that count for all of them in O(1) memory, and knows its own
``total``. :class:`ExampleShares` is ``p_i = n_i / sum_j n_j`` (SCAFFOLD's and FedDyn's weights
of client ``i`` in their global sums), computed when asked for, so a million registered clients
cost nothing here. Samplers and clocks recognise :class:`Repeated` to skip per-client arrays.

Example:
    >>> counts = Repeated(20, 1_000_000)
    >>> len(counts), counts[999_999], counts.total
    (1000000, 20, 20000000)
    >>> ExampleShares(counts)[7] == 20 / 20_000_000
    True
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

from fedloom.core.errors import ConfigError

#: above this many registered clients, samplers and clocks draw per client on demand (Floyd's
#: sampling, a Feistel permutation, per-client speed streams) instead of holding an array of
#: them; at or below it every draw is the same as before those existed
LARGE_POPULATION = 1 << 16


class _Ints(Sequence[int]):
    """A sequence of ints computed per position: subclasses give ``__len__`` and ``_at`` (for
    0 <= i < len); indexing with negatives and slices works as on a list."""

    def _at(self, i: int) -> int:
        raise NotImplementedError

    @overload
    def __getitem__(self, i: int) -> int: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[int]: ...

    def __getitem__(self, i: int | slice) -> int | Sequence[int]:
        n = len(self)
        if isinstance(i, slice):
            return [self._at(j) for j in range(*i.indices(n))]
        if not -n <= i < n:
            raise IndexError(i)
        return self._at(i + n if i < 0 else i)


class Repeated(_Ints):
    """``value`` repeated ``length`` times, without a list (every client's example count)."""

    def __init__(self, value: int, length: int) -> None:
        self.value, self.length = value, length

    @property
    def total(self) -> int:
        """The sum of the sequence, in O(1)."""
        return self.value * self.length

    def __len__(self) -> int:
        return self.length

    def _at(self, i: int) -> int:
        return self.value

    def __iter__(self) -> Iterator[int]:
        return (self.value for _ in range(self.length))

    def __reduce__(self) -> tuple[type, tuple[int, int]]:
        return Repeated, (self.value, self.length)


def total_examples(num_examples: Sequence[int]) -> int:
    """``sum(num_examples)``; O(1) for :class:`Repeated`."""
    if isinstance(num_examples, Repeated):
        return num_examples.total
    return int(sum(num_examples))


class ExampleShares:
    """Client ``i``'s share of all training examples, ``num_examples[i] / total``, on demand.

    The value is the same float the list ``[n / total for n in num_examples]`` holds; nothing
    is stored per client.
    """

    def __init__(self, num_examples: Sequence[int]) -> None:
        self.num_examples = num_examples
        self.total = float(total_examples(num_examples))
        if len(num_examples) and not self.total > 0:
            raise ConfigError(f"the {len(num_examples)} registered clients hold no training "
                              "examples: their shares of all examples are undefined")

    def __len__(self) -> int:
        return len(self.num_examples)

    def __getitem__(self, client_id: int) -> float:
        return self.num_examples[client_id] / self.total


class Excluding(_Ints):
    """``range(n)`` without the ids in ``excluded``, ascending, without a list of them: the idle
    clients of a population where a few are busy. Length and membership cost O(1), an element
    O(log b) for b excluded ids in range (and O(b log b) once to sort them).

    Example:
        >>> idle = Excluding(1_000_000, {3, 5})
        >>> len(idle), idle[2], idle[3], idle[4], 5 in idle, list(Excluding(6, {0, 5}))
        (999998, 2, 4, 6, False, [1, 2, 3, 4])
    """

    def __init__(self, n: int, excluded: Iterable[int]) -> None:
        self.n = n
        self.excluded = frozenset(c for c in excluded if 0 <= c < n)
        self._sorted = sorted(self.excluded)

    def __len__(self) -> int:
        return self.n - len(self.excluded)

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and 0 <= value < self.n and value not in self.excluded

    def _at(self, i: int) -> int:
        # the i-th kept id x satisfies x = i + (excluded ids <= x): iterate to the fixed point
        x, before = i, -1
        while (skipped := bisect.bisect_right(self._sorted, x)) != before:
            before, x = skipped, i + skipped
        return x

    def __iter__(self) -> Iterator[int]:
        return (c for c in range(self.n) if c not in self.excluded)
