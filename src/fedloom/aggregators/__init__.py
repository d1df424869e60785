"""How the server turns the cohort's updates into one: the rule an averaging algorithm's
mean is replaced by (robust aggregation, central differential privacy).

An :class:`UpdateRule` sees the round's updates as one ``K x P`` matrix (row ``k``: client
``k``'s parameters minus the global model) with the clients' example counts, and returns one
update of ``P`` values; :class:`~fedloom.algorithms.combined.Combined` hands the algorithm
``global + update`` in place of the example-weighted mean, so the algorithm's server step
(FedAvg's, FedOpt's optimiser, ...) steps from it. This package depends on torch only.
"""

from fedloom.aggregators.rule import Combination, UpdateRule

__all__ = ["Combination", "UpdateRule"]
