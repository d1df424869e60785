import torch
from torch import nn

from fedloom.core.layout import BoundModule, ParamLayout


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))


def test_layout_offsets_cover_params_then_buffers() -> None:
    layout = ParamLayout.from_module(_model())
    names = layout.names
    assert names[:6] == ("0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias")
    assert names[6:] == ("1.running_mean", "1.running_var", "1.num_batches_tracked")
    assert [e.offset for e in layout.entries] == [0, 18, 20, 22, 24, 48, 51, 53, 55]
    assert layout.size == 56
    assert layout.num_trainable == 51
    assert layout.entries[-1].dtype == torch.int64


def test_flatten_unflatten_round_trip_keeps_dtypes() -> None:
    model = _model()
    model.get_submodule("1").num_batches_tracked.fill_(7)
    layout = ParamLayout.from_module(model)
    flat = layout.module_to_flat(model)
    back = layout.unflatten(flat)
    for name, tensor in model.state_dict().items():
        assert back[name].dtype == tensor.dtype
        assert torch.equal(back[name], tensor)


def test_bound_module_views_flat_buffer() -> None:
    model = _model()
    layout = ParamLayout.from_module(model)
    expected = layout.module_to_flat(model)
    bound = BoundModule(model, layout)
    assert torch.equal(bound.read(), expected)
    new = torch.arange(layout.size, dtype=torch.float32)
    bound.load(new)
    assert torch.equal(model.get_submodule("0").bias.detach(), torch.tensor([18.0, 19.0]))
    assert model.get_submodule("1").num_batches_tracked.item() == 55
    # an optimiser step on the module moves the flat buffer
    x = torch.randn(4, 1, 4, 4)
    model(x).sum().backward()
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    assert not torch.equal(bound.read()[:51], new[:51])
    # batch norm updated its running stats in place, inside the flat buffer
    running_mean = model.get_submodule("1").running_mean
    assert running_mean.data_ptr() == bound.flat[51:53].data_ptr()
    assert not torch.equal(bound.flat[51:53], new[51:53])
