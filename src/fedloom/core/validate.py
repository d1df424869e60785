"""Collect configuration problems so they can all be reported at once."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedloom.core.errors import ConfigError


@dataclass(slots=True)
class Problems:
    """Accumulates problems of the form ``key = value: what is allowed``.

    Example:
        >>> p = Problems()
        >>> p.check(-1.0 > 0, "lr", -1.0, "must be > 0")
        >>> p.items
        ['lr = -1.0: must be > 0']
    """

    items: list[str] = field(default_factory=list)

    def check(self, ok: bool, key: str, value: object, allowed: str) -> None:
        if not ok:
            self.add(key, value, allowed)

    def add(self, key: str, value: object, allowed: str) -> None:
        self.items.append(f"{key} = {value!r}: {allowed}")

    def extend(self, prefix: str, error: ConfigError) -> None:
        self.items.extend(f"{prefix}.{p}" if prefix else p for p in error.problems)

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)
