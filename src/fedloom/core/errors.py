"""The fedloom error tree.

Every error fedloom raises on purpose derives from :class:`FedloomError`::

    FedloomError
    ├── ConfigError        a config key, type or value is wrong (all problems reported at once)
    ├── DataError          a data file is missing, truncated, corrupt or fails its checksum
    ├── TransportError     a network message is malformed or a connection failed
    ├── ClientError        a client failed while training or evaluating
    ├── AggregationError   client updates cannot be combined (shape, dtype, non-finite values)
    │   └── RoundAborted   a round failed as a whole (e.g. secure aggregation below its
    │                      threshold): the loop keeps the state and tries it again
    └── CheckpointError    a checkpoint cannot be written or read

Errors carry context (round, client id, stage) where it exists, so a message read in a log names
where the problem happened.
"""

from __future__ import annotations


class FedloomError(Exception):
    """Base of every error fedloom raises on purpose."""


class ConfigError(FedloomError):
    """One or more configuration problems.

    Attributes:
        problems: every problem found, each naming the key, the value and what is allowed.
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = f"invalid configuration: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"invalid configuration ({len(self.problems)} problems):\n{lines}"
        super().__init__(message)


class DataError(FedloomError):
    """A dataset could not be found, read or verified; the message names the file."""


class TransportError(FedloomError):
    """A network message or connection problem."""


class ClientError(FedloomError):
    """A client failed; carries the round, client id and stage."""

    def __init__(self, message: str, *, round: int | None = None, client_id: int | None = None,
                 stage: str | None = None) -> None:
        self.round = round
        self.client_id = client_id
        self.stage = stage
        where = ", ".join(
            f"{k} {v}" for k, v in (("round", round), ("client", client_id), ("stage", stage))
            if v is not None
        )
        super().__init__(f"{message} ({where})" if where else message)


class AggregationError(FedloomError):
    """Client updates could not be aggregated."""


class RoundAborted(AggregationError):
    """A round that failed as a whole, with the round and stage: the server loop keeps the
    state and counts it as a failed attempt (run again with a fresh cohort while
    ``cohort.retries`` allow, like a round short of results)."""

    def __init__(self, message: str, *, round: int, stage: str) -> None:
        self.round, self.stage, self.reason = round, stage, message
        super().__init__(f"{message} (round {round}, stage {stage})")


class CheckpointError(FedloomError):
    """A checkpoint could not be written or read."""
