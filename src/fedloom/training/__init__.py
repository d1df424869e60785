"""What clients compute, wherever they run: the local SGD executor (:class:`LocalTrainer`), the
picklable description fleets build it from (:class:`ClientSpec`), and evaluation of models on
test sets and clients' data (:mod:`fedloom.training.evaluation`)."""

from fedloom.training.trainer import LocalTrainer, LossFn

__all__ = ["LocalTrainer", "LossFn"]
