"""The client side of a round: the local SGD executor."""

from fedloom.client.trainer import LocalTrainer, LossFn

__all__ = ["LocalTrainer", "LossFn"]
