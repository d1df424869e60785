"""Your own examples as checked tensors: from arrays, a map-style torch Dataset, or a Hugging Face
``datasets.Dataset`` (the optional ``hf`` extra, imported only here and only when used).

Inputs keep ``uint8`` (images, scaled to [0, 1] per batch) and other integer dtypes (token ids for
an embedding); floats become ``float32``, booleans ``float32``. Labels become ``int64``. Every
error names the example (``x[7]``, ``dataset[7][0]``, ``column 'image'[7]``) and what was wrong.

Example:
    >>> x, y = inputs([[0, 1], [2, 3]], "x"), labels([1, 0], "y")
    >>> x.dtype, tuple(x.shape), y.tolist()
    (torch.int64, (2, 2), [1, 0])
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch

from fedloom.core.errors import ConfigError, DataError

if TYPE_CHECKING:
    import datasets
    from torch.utils.data import Dataset


def inputs(x: npt.ArrayLike | torch.Tensor, what: str) -> torch.Tensor:
    """``x`` as a tensor of shape (n, ...) (a 1-d ``x`` is one feature per example)."""
    if isinstance(x, torch.Tensor):
        t = _dtype(x.detach().cpu(), what)
    elif isinstance(x, np.ndarray) and x.dtype != object:
        t = _dtype(_from_numpy(x, what), what)
    elif isinstance(x, np.ndarray | Sequence):
        return stack_items(enumerate(x), len(x), what)
    else:
        raise DataError(f"{what} is a {type(x).__name__}: inputs must be a tensor, an array or "
                        "a list of examples")
    if t.ndim == 0:
        raise DataError(f"{what} is a single number: inputs need one row per example")
    t = t.reshape(-1, 1) if t.ndim == 1 else t
    _check_finite(t, what)
    return t


def labels(y: npt.ArrayLike | torch.Tensor, what: str) -> torch.Tensor:
    """``y`` as an int64 tensor of shape (n,), every label >= 0."""
    t = y.detach().cpu() if isinstance(y, torch.Tensor) else _from_numpy(np.asarray(y), what)
    if t.ndim != 1:
        raise DataError(f"{what} has shape {tuple(t.shape)}: labels must be one per example, "
                        "a 1-d array")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise DataError(f"{what} is {t.dtype}: labels must be integers (class indices 0, 1, "
                        "...)")
    bad = torch.nonzero(t < 0).reshape(-1)
    if bad.numel():
        i = int(bad[0])
        raise DataError(f"{what}[{i}] = {int(t[i])}: labels must be >= 0")
    return t.to(torch.int64)


def stack_items(items: Iterable[tuple[int, object]], n: int, what: str,
                suffix: str = "") -> torch.Tensor:
    """``n`` examples (index, value) as one tensor of shape (n, ...): each must have item 0's
    shape and dtype; a 0-d shape becomes one feature per example."""
    out: torch.Tensor | None = None
    for i, item in items:
        t = _item(item, f"{what}[{i}]{suffix}")
        if out is None:
            out = torch.empty((n, *t.shape), dtype=t.dtype)
        elif t.shape != out.shape[1:] or t.dtype != out.dtype:
            raise DataError(f"{what}[{i}]{suffix} is {t.dtype} of shape {tuple(t.shape)}, "
                            f"but {what}[0]{suffix} was {out.dtype} of shape "
                            f"{tuple(out.shape[1:])}: every example needs the same")
        out[i] = t
    if out is None:
        raise DataError(f"{what} has no examples")
    out = out.reshape(n, 1) if out.ndim == 1 else out
    _check_finite(out, what)
    return out


def from_torch(dataset: Dataset[object], what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A map-style dataset of (input, label) pairs, read once, as (inputs, labels)."""
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise DataError(f"{what} ({type(dataset).__name__}) has no len(): from_torch needs a "
                        "map-style dataset (__len__ and __getitem__); an IterableDataset "
                        "cannot be indexed") from None
    if n == 0:
        raise DataError(f"{what} has no examples")
    ys: list[int] = []

    def xs() -> Iterable[tuple[int, object]]:
        for i in range(n):
            try:
                item = dataset[i]
            except Exception as err:
                raise DataError(f"{what}[{i}] could not be read: {type(err).__name__}: "
                                f"{err}") from err
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise DataError(f"{what}[{i}] is a {type(item).__name__}"
                                f"{f' of {len(item)}' if isinstance(item, tuple | list) else ''}"
                                ": from_torch needs (input, label) pairs")
            ys.append(_label(item[1], f"{what}[{i}][1]"))
            yield i, item[0]

    x = stack_items(xs(), n, what, suffix="[0]")
    return x, torch.tensor(ys, dtype=torch.int64)


def from_hf(dataset: datasets.Dataset, x: str | Sequence[str], y: str, what: str,
            clients: str | None = None) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
    """Columns ``x`` (one, or several concatenated per example in the order given) and label
    column ``y`` of a Hugging Face Dataset, as (inputs, labels, client ids): the client ids
    are column ``clients`` (None when not named), read in the same pass."""
    columns = [x] if isinstance(x, str) else list(x)
    table = hf_columns(dataset, [*columns, y] + ([] if clients is None else [clients]), what)
    for c in [*columns, y]:
        if table[c].dtype.kind in "US" or isinstance(table[c][0], str):
            raise DataError(f"{what} column {c!r} holds text, not numbers: tokenize or encode "
                            "it first (dataset.map, dataset.class_encode_column)")
    parts = [inputs(table[c], f"{what} column {c!r}") for c in columns]
    features = parts[0] if len(parts) == 1 else torch.cat(
        [p.reshape(p.shape[0], -1) for p in _same_dtype(parts, columns, what)], dim=1)
    owners = None if clients is None else table[clients]
    return features, labels(table[y], f"{what} column {y!r}"), owners


def hf_columns(dataset: datasets.Dataset, columns: Sequence[str],
               what: str) -> dict[str, np.ndarray]:
    """The named columns of ``dataset`` as numpy arrays (object arrays where ragged)."""
    hf = import_datasets()
    if isinstance(dataset, hf.DatasetDict):
        raise DataError(f"{what} is a DatasetDict (splits {', '.join(dataset)}): pass one "
                        "split, e.g. dataset['train'], and test=dataset['test']")
    if not isinstance(dataset, hf.Dataset):
        raise DataError(f"{what} is a {type(dataset).__name__}, not a datasets.Dataset "
                        "(a streaming IterableDataset cannot be materialised)")
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise DataError(f"{what} has no column {', '.join(map(repr, missing))}; its columns: "
                        f"{', '.join(dataset.column_names)}")
    if len(dataset) == 0:
        raise DataError(f"{what} has no examples")
    table = dataset.select_columns(list(dict.fromkeys(columns))).with_format("numpy")[:]
    out: dict[str, np.ndarray] = {}
    for c in columns:
        column = table[c]
        out[c] = column if isinstance(column, np.ndarray) else _object_array(list(column))
    return out


def class_label_count(dataset: datasets.Dataset, y: str) -> int | None:
    """The number of classes of a ClassLabel column (None for other columns)."""
    feature = dataset.features.get(y)
    count = getattr(feature, "num_classes", None)
    return int(count) if isinstance(count, int) else None


def import_datasets() -> ModuleType:
    """The ``datasets`` package (the optional ``hf`` extra), or a clear error without it."""
    try:
        return importlib.import_module("datasets")
    except ImportError:
        raise ConfigError("FederatedData.from_hf needs Hugging Face datasets: pip install "
                          "'fedloom[hf]'") from None


def _object_array(values: list[object]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _same_dtype(parts: list[torch.Tensor], columns: list[str],
                what: str) -> list[torch.Tensor]:
    """Columns concatenated into one input: integers join floats as float32."""
    if any(p.is_floating_point() for p in parts):
        return [p.to(torch.float32) for p in parts]
    if len({p.dtype for p in parts}) > 1:
        kinds = ", ".join(f"{c!r} {p.dtype}" for c, p in zip(columns, parts))
        raise DataError(f"{what}: columns {kinds} cannot be joined into one input")
    return parts


def _item(value: object, what: str) -> torch.Tensor:
    """One example's input as a tensor."""
    if isinstance(value, torch.Tensor):
        return _dtype(value.detach().cpu(), what)
    if isinstance(value, bool | int | float | np.number | np.bool_):
        return _dtype(torch.as_tensor(value), what)
    if isinstance(value, np.ndarray | list | tuple):
        try:
            array = np.asarray(value)
        except ValueError as err:  # numpy 2 refuses ragged nesting
            raise DataError(f"{what} is ragged: {err}") from None
        return _dtype(_from_numpy(array, what), what)
    hint = (": give the dataset a transform making tensors (e.g. torchvision's PILToTensor())"
            if type(value).__module__.startswith("PIL") else "")
    raise DataError(f"{what} is a {type(value).__module__}.{type(value).__name__}, not a tensor, "
                    f"array or number{hint}")


def _label(value: object, what: str) -> int:
    """One example's label as an int: an int, a numpy integer, or a one-element integer tensor
    or array."""
    if isinstance(value, torch.Tensor | np.ndarray):
        t = value if isinstance(value, torch.Tensor) else _from_numpy(value, what)
        if t.numel() != 1 or t.is_floating_point() or t.dtype == torch.bool:
            raise DataError(f"{what} is {t.dtype} of shape {tuple(t.shape)}: a label must be "
                            "one integer class index")
        value = int(t.item())
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{what} = {value!r} ({type(value).__name__}): a label must be an "
                        "integer class index")
    if value < 0:
        raise DataError(f"{what} = {value}: labels must be >= 0")
    return value


def _from_numpy(array: np.ndarray, what: str) -> torch.Tensor:
    kind = array.dtype.kind
    if kind == "u" and array.dtype != np.uint8:
        array = array.astype(np.int64)
    elif kind not in "biuf":
        raise DataError(f"{what} has dtype {array.dtype}: examples must be numbers")
    array = np.ascontiguousarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())  # Arrow: read-only


def _dtype(t: torch.Tensor, what: str) -> torch.Tensor:
    if t.is_complex():
        raise DataError(f"{what} is {t.dtype}: complex inputs are not supported")
    if t.is_floating_point() or t.dtype == torch.bool:
        return t.to(torch.float32)
    return t


def _check_finite(t: torch.Tensor, what: str) -> None:
    if not t.is_floating_point():
        return
    bad = torch.nonzero(~torch.isfinite(t).reshape(t.shape[0], -1).all(dim=1)).reshape(-1)
    if bad.numel():
        raise DataError(f"{what}[{int(bad[0])}] holds NaN or infinity: inputs must be finite")
