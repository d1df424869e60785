"""The CIFAR models on the vectorized fleet: GroupNorm and local response norm are stateless,
so the stacked clients must train exactly as the serial fleet trains each one.

Tolerance as in ``test_vectorized.py``: every final parameter within ``TOL = 1e-5`` of the
serial fleet's after the clients' local training (clients of unequal sizes, so masking is
exercised); a masking mistake moves parameters by 1e-3 or more.
"""

from __future__ import annotations

from functools import partial

import pytest

from fedloom import ClientConfig
from fedloom.fleets.vectorized import VectorizedTrainer
from fedloom.models.cifar import cifar_cnn, resnet_gn
from tests.conftest import make_image_data
from tests.fleets.test_vectorized import assert_same_as_serial, make_spec, make_tasks

MODELS = {
    "resnet_gn": partial(resnet_gn, (1, 6, 6), 4, 8, 2),
    "resnet_gn-4groups": partial(resnet_gn, (1, 6, 6), 4, 8, 4),
    "cifar_cnn": partial(cifar_cnn, (1, 6, 6), 4),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("model", list(MODELS))
def test_cifar_models_vectorized_agree_with_serial(model: str) -> None:
    spec = make_spec(make_image_data(per_client=(1, 3, 10, 25, 47)), MODELS[model])
    config = ClientConfig(epochs=1, batch_size=8, lr=0.05, momentum=0.9)
    tasks = make_tasks(spec, [config] * 5)
    got = VectorizedTrainer(spec).fit_many(tasks)
    assert_same_as_serial(spec, tasks, got)
