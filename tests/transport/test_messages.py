"""fedloom's packages <-> protocol messages: exact round trips, and checks against the layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientConfig, ClientResult, Downlink
from fedloom.transport.codec import MessageRejected, Rejection
from fedloom.transport.generated import fedloom_pb2 as pb
from fedloom.transport.messages import (
    ReplySchema,
    config_from_proto,
    config_to_proto,
    downlink_from_package,
    downlink_to_package,
    layout_from_proto,
    layout_to_proto,
    result_from_package,
    result_to_package,
    scalar_from_proto,
    scalar_to_proto,
)
from tests.loopback import through_the_wire


def bn_layout() -> ParamLayout:
    return ParamLayout.from_module(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))


def test_a_layout_round_trips_including_buffers_and_dtypes() -> None:
    layout = bn_layout()
    assert layout_from_proto(layout_to_proto(layout)) == layout


def test_a_layout_with_a_gap_is_refused() -> None:
    msg = layout_to_proto(bn_layout())
    msg.entries[1].offset += 1
    with pytest.raises(MessageRejected) as err:
        layout_from_proto(msg)
    assert err.value.reason == Rejection.BAD_SPEC


@pytest.mark.parametrize("cfg", [ClientConfig(), ClientConfig(epochs=3, steps=7, batch_size=0,
                                                              lr=0.25, momentum=0.5,
                                                              weight_decay=1e-4)])
def test_a_training_config_round_trips(cfg: ClientConfig) -> None:
    assert config_from_proto(config_to_proto(cfg)) == cfg


def test_an_impossible_training_config_is_a_bad_value() -> None:
    with pytest.raises(MessageRejected) as err:
        config_from_proto(pb.TrainConfig(epochs=1, lr=-1.0, batch_size=1))
    assert err.value.reason == Rejection.BAD_VALUE and "lr" in err.value.detail


@pytest.mark.parametrize("value", [True, 3, 2.5, "text"])
def test_scalars_keep_their_type(value: object) -> None:
    back = scalar_from_proto(scalar_to_proto(value))  # type: ignore[arg-type]
    assert back == value and type(back) is type(value)


def test_a_downlink_and_a_result_cross_the_wire_exactly() -> None:
    layout = bn_layout()
    params = torch.randn(layout.size)
    down = Downlink(round=4, client_id=2, params=params, config=ClientConfig(lr=0.3),
                    extras={"correction": torch.randn(layout.num_trainable)})
    got = downlink_from_package(through_the_wire(*downlink_to_package(9, down)), layout)
    assert got.round == 4 and got.client_id == 2 and got.config == down.config
    assert torch.equal(got.params, params)
    assert torch.equal(got.extras["correction"], down.extras["correction"])
    result = ClientResult(round=4, client_id=2, params=params * 2, num_examples=11, num_steps=5,
                          metrics={"train_loss": Mean(3.5, 11.0)},
                          extras={"c_i": torch.randn(layout.num_trainable),
                                  "fednova_a": torch.tensor(2.5, dtype=torch.float64)})
    back = result_from_package(through_the_wire(*result_to_package(9, result)), layout=layout)
    assert back.metrics == result.metrics and back.num_steps == 5 and back.num_examples == 11
    assert torch.equal(back.params, result.params)
    assert all(torch.equal(back.extras[k], v) for k, v in result.extras.items())


@pytest.mark.parametrize(("tensors", "schema", "reason"), [
    ({"params": torch.zeros(3)}, None, Rejection.WRONG_SHAPE),
    ({"params": torch.zeros(33, dtype=torch.float64)}, None, Rejection.BAD_DTYPE),
    ({}, None, Rejection.MALFORMED),
    ({"params": torch.zeros(33), "weights": torch.zeros(2)}, None, Rejection.MALFORMED),
    ({"params": torch.zeros(33), "extras/c_i": torch.zeros(2, 2)}, None, Rejection.WRONG_SHAPE),
    ({"params": torch.zeros(33), "extras/c_i": torch.zeros(3, dtype=torch.int64)}, None,
     Rejection.BAD_DTYPE),
    ({"params": torch.zeros(33)}, ReplySchema(extras={"c_i": 24}), Rejection.MALFORMED),
    ({"params": torch.zeros(33), "extras/c_i": torch.zeros(5)}, ReplySchema(extras={"c_i": 24}),
     Rejection.WRONG_SHAPE),
    ({"params": torch.zeros(33)}, ReplySchema(metrics=frozenset({"start_loss"})),
     Rejection.MALFORMED),
])
def test_a_reply_that_does_not_fit_the_layout_or_algorithm_is_rejected(
        tensors: dict[str, torch.Tensor], schema: ReplySchema | None, reason: Rejection) -> None:
    layout = bn_layout()
    assert (layout.size, layout.num_trainable) == (33, 24)
    header = pb.Header(kind=pb.FIT_REPLY, task_id=1, num_examples=2)
    with pytest.raises(MessageRejected) as err:
        result_from_package(through_the_wire(header, tensors), layout=layout, schema=schema)
    assert err.value.reason == reason
