"""How the server turns the cohort's updates into one: the rule an averaging algorithm's
mean is replaced by (robust aggregation, central differential privacy).

An :class:`UpdateRule` sees the round's updates as one ``K x P`` matrix (row ``k``: client
``k``'s parameters minus the global model) with the clients' example counts, and returns one
update of ``P`` values; :class:`~fedloom.algorithms.combined.Combined` hands the algorithm
``global + update`` in place of the example-weighted mean, so the algorithm's server step
(FedAvg's, FedOpt's optimiser, ...) steps from it. This package depends on torch only.

The robust aggregators are plain functions ``(updates K x P, weights K | None, ...) -> P``,
usable without the rest of fedloom: :func:`median`, :func:`trimmed_mean`, :func:`krum`,
:func:`multi_krum`, :func:`bulyan`, :func:`geometric_median`, :func:`norm_bound`,
:func:`centered_clip`; :func:`build_rule` makes an ``aggregator`` config section a rule.

Example:
    >>> median(torch.tensor([[1.0], [2.0], [50.0]]), None)
    tensor([2.])
"""

import torch  # noqa: F401  (the example uses it)

from fedloom.aggregators.coordinate import median, trimmed_mean
from fedloom.aggregators.geometric import centered_clip, geometric_median, norm_bound
from fedloom.aggregators.krum import bulyan, krum, multi_krum
from fedloom.aggregators.rule import Combination, UpdateRule
from fedloom.aggregators.rules import AggregatorConfig, RobustRule, build_rule

__all__ = ["Combination", "UpdateRule",
           "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geometric_median",
           "norm_bound", "centered_clip",
           "AggregatorConfig", "RobustRule", "build_rule"]
