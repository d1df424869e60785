"""LEAF JSON: exact parsing of each dataset from files written in LEAF's layout, and every check."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from fedloom.core.errors import DataError
from fedloom.data.config import DataConfig, DatasetName, LeafDataset, PartitionKind
from fedloom.data.leaf import load_leaf
from fedloom.data.leaf_features import LEAF_LETTERS, OTHER_LETTER, SHAKESPEARE_CLASSES
from fedloom.data.load import load_federated
from fedloom.data.pixels import uint8_mean_std
from tests.data.leaf_files import Users, femnist_files, leaf_doc, pixels, write_leaf


def leaf_cfg(folder: Path, **kw: object) -> DataConfig:
    return DataConfig(name=DatasetName.LEAF, leaf_dir=str(folder), **kw)  # type: ignore[arg-type]


def indices(t: torch.Tensor) -> list[int]:
    return [int(v) for v in t]


def test_femnist_users_become_clients_with_their_test_splits(tmp_path: Path) -> None:
    data = load_leaf(leaf_cfg(femnist_files(tmp_path)), seed=0)
    assert data.name == "leaf_femnist" and data.num_classes == 62
    assert data.input_shape == (1, 28, 28)
    train, test = data.arrays(), data.test
    assert train.x.dtype == torch.uint8 and train.x.shape == (6, 1, 28, 28)
    for row, seed in enumerate((0, 1, 2, 3, 4, 61)):  # lossless: value k/255 is stored as k
        assert train.x[row].reshape(-1).tolist() == [(i * 7 + seed * 13) % 256 for i in range(784)]
    assert train.y.tolist() == [0, 1, 2, 3, 4, 61]
    assert [indices(c) for c in data.client_train] == [[0, 1], [2], [3, 4, 5]]
    assert data.client_test is not None  # f2 has no test examples; f9 is only in the test set
    assert [indices(c) for c in data.client_test] == [[0], [], [1, 2]]
    assert test.y.tolist() == [5, 6, 7, 8] and test.x.shape == (4, 1, 28, 28)
    assert (train.mean, train.std) == uint8_mean_std(train.x) == (test.mean, test.std)
    x, y = train.batch(torch.tensor([0]))  # normalised as images: (k / 255 - mean) / std
    want = (torch.tensor(pixels(0)) - train.mean) / train.std
    assert torch.allclose(x.reshape(-1), want, atol=1e-5) and y.tolist() == [0]


def test_femnist_keeps_the_largest_writers_with_their_test_splits(tmp_path: Path) -> None:
    data = load_federated(leaf_cfg(femnist_files(tmp_path), num_clients=2), seed=0)
    assert [indices(c) for c in data.client_train] == [[0, 1], [3, 4, 5]]  # f1, f3 in order
    assert data.client_test is not None
    assert [indices(c) for c in data.client_test] == [[0], [1, 2]]
    assert data.local_test(1) is not None


def test_femnist_pooled_and_resplit_when_not_natural(tmp_path: Path) -> None:
    cfg = leaf_cfg(femnist_files(tmp_path), num_clients=3, partition=PartitionKind.IID)
    data = load_federated(cfg, seed=0)
    assert data.client_test is None
    assert sorted(i for c in data.client_train for i in indices(c)) == list(range(6))


def test_femnist_values_off_the_255_grid_stay_float32(tmp_path: Path) -> None:
    image = [0.5] * 784  # 127.5 / 255: not a uint8 level
    write_leaf(tmp_path, train=[{"w": ([image], [3])}], test=[{"w": ([pixels(0)], [1])}])
    data = load_leaf(leaf_cfg(tmp_path, leaf_dataset=LeafDataset.FEMNIST), seed=0)
    assert data.arrays().x.dtype == torch.float32 and data.test.x.dtype == torch.float32
    assert float(data.arrays().x.max()) == 0.5
    assert torch.allclose(data.test.x.reshape(-1), torch.tensor(pixels(0)))  # k/255 as float
    assert (data.arrays().mean, data.arrays().std) == (0.0, 1.0)  # floats used as they are


def test_shakespeare_letters_and_the_extra_index(tmp_path: Path) -> None:
    train: Users = {"ROMEO": (["Hi th", "ere|!"], ["e", "\n"]), "JULIET": (["ab}cé"], ["Z"])}
    write_leaf(tmp_path, train=[train], test=[{"ROMEO": (["a b c"], ["|"])}])
    data = load_leaf(leaf_cfg(tmp_path), seed=0)  # detected: x are strings
    assert data.name == "leaf_shakespeare" and data.num_classes == SHAKESPEARE_CLASSES == 81
    assert len(LEAF_LETTERS) == 80 and LEAF_LETTERS.index("a") == 53  # by hand: 25 + 26 + 2
    train_x = data.arrays().x
    assert train_x.dtype == torch.int64 and data.input_shape == (5,)

    def ids(text: str) -> list[int]:
        return [LEAF_LETTERS.index(c) if c in LEAF_LETTERS else OTHER_LETTER for c in text]

    assert train_x.tolist() == [ids("Hi th"), ids("ere|!"), ids("ab}cé")]
    assert train_x[1].tolist()[3] == OTHER_LETTER == 80 and train_x[2].tolist()[4] == 80
    assert data.arrays().y.tolist() == ids("e\nZ")
    assert data.test.y.tolist() == [80] and data.test.x.tolist() == [ids("a b c")]
    assert ids("\n !A}") == [0, 1, 2, 25, 79]  # LEAF's order: newline, space, "!", ..., "}"


def test_sent140_hashed_bag_of_words(tmp_path: Path) -> None:
    def tweet(text: str) -> list[object]:
        return ["1467810369", "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY", "someone", text]

    texts = ["Good good DAY @bob #fun!", "a " * 300, ""]
    write_leaf(tmp_path, train=[{"u1": ([tweet(t) for t in texts], [1, 0, 0])}],
               test=[{"u1": ([tweet("bad day")], [0])}])
    data = load_leaf(leaf_cfg(tmp_path, leaf_text_features=64), seed=0)
    assert data.name == "leaf_sent140" and data.num_classes == 2
    x = data.arrays().x
    assert x.dtype == torch.uint8 and x.shape == (3, 64)
    want = np.zeros(64, dtype=np.int64)
    for token in ("good", "good", "day", "@bob", "#fun"):
        want[zlib.crc32(token.encode()) % 64] += 1
    assert x[0].tolist() == want.tolist()
    assert int(x[1].sum()) == 255 and int(x[1, zlib.crc32(b"a") % 64]) == 255  # capped
    assert int(x[2].sum()) == 0 and data.arrays().y.tolist() == [1, 0, 0]
    assert int(data.test.x[0, zlib.crc32(b"bad") % 64]) >= 1


def test_synthetic_vectors_and_classes_from_the_labels(tmp_path: Path) -> None:
    train: Users = {"0": ([[0.5, -1.0, 2.0], [1.0, 0.0, 0.25]], [0, 4]), "1": ([[3, 2, 1]], [2])}
    write_leaf(tmp_path, train=[train], test=[{"1": ([[0.0, 0.0, 1.0]], [6])}])
    data = load_leaf(leaf_cfg(tmp_path), seed=0)
    assert data.name == "leaf_synthetic" and data.num_classes == 7 and data.input_shape == (3,)
    x = data.arrays().x
    assert x.dtype == torch.float32
    assert x.tolist() == [[0.5, -1.0, 2.0], [1.0, 0.0, 0.25], [3.0, 2.0, 1.0]]
    assert data.client_test is not None
    assert [indices(c) for c in data.client_test] == [[], [0]]


def test_folder_found_under_a_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    femnist_files(tmp_path / "root" / "leaf" / "femnist" / "data")
    monkeypatch.setenv("FEDLOOM_DATA", str(tmp_path / "root"))
    data = load_leaf(DataConfig(name=DatasetName.LEAF), seed=0)  # dataset from the folder name
    assert data.name == "leaf_femnist"
    assert load_leaf(leaf_cfg(tmp_path / "root" / "leaf" / "femnist"), seed=0).num_clients == 3
    direct = DataConfig(name=DatasetName.LEAF, dir=str(tmp_path / "root" / "leaf" / "femnist"))
    assert load_leaf(direct, seed=0).num_clients == 3  # data.dir as the LEAF folder itself
    with pytest.raises(DataError, match=r"(?s)no folder with train/ and test/.*preprocess\.sh"):
        load_leaf(leaf_cfg(tmp_path / "nowhere"), seed=0)


def _synthetic_docs() -> tuple[dict[str, object], dict[str, object]]:
    train = leaf_doc({"a": ([[1.0, 2.0]], [0]), "b": ([[3.0, 4.0], [5.0, 6.0]], [1, 1])})
    return train, leaf_doc({"a": ([[0.0, 1.0]], [1])})


def _user(doc: dict[str, object], name: str) -> dict[str, list[object]]:
    data = doc["user_data"]
    assert isinstance(data, dict)
    entry = data[name]
    assert isinstance(entry, dict)
    return entry


Mutate = Callable[[dict[str, object]], object]
BAD: dict[str, tuple[Mutate, str]] = {
    "num_samples": (lambda d: d.update(num_samples=[1, 3]),
                    r"part_0\.json: user 'b': num_samples says 3 but x has 2 examples and y 2"),
    "y length": (lambda d: _user(d, "b")["y"].pop(),
                 r"user 'b': num_samples says 2 but x has 2 examples and y 1 labels"),
    "users vs num_samples": (lambda d: d.update(num_samples=[1]),
                             r"'users' lists 2 users but 'num_samples' has 1 counts"),
    "listed user missing": (lambda d: d.update(users=["a", "b", "zed"], num_samples=[1, 2, 0]),
                            r"user 'zed' is in 'users' but not in 'user_data'"),
    "unlisted user": (lambda d: d.update(users=["a"], num_samples=[1]),
                      r"'user_data' has user 'b', who is not in 'users'"),
    "missing key": (lambda d: d.pop("user_data"), r"part_0\.json: missing 'user_data'"),
    "hierarchies": (lambda d: d.update(hierarchies=["h"]),
                    r"'hierarchies' must have one entry per user \(2\); it has 1"),
    "ragged x": (lambda d: _user(d, "b")["x"].__setitem__(1, [5.0]),
                 r"user 'b': x\[1\] = \[5\.0\]: every example must be a list of 2"),
    "text in x": (lambda d: _user(d, "b")["x"].__setitem__(0, [3.0, "4"]),
                  r"user 'b': x\[0\] = \[3\.0, '4'\]"),
    "width across users": (lambda d: _user(d, "b").update(x=[[3.0], [5.0]]),
                           r"train: user 'b': examples have shape \(1,\) but the first user's"),
    "non-integer label": (lambda d: _user(d, "b")["y"].__setitem__(1, 0.5),
                          r"user 'b': y\[1\] = 0\.5: each label must be a non-negative integer"),
    "negative label": (lambda d: _user(d, "a").update(y=[-1]), r"user 'a': y\[0\] = -1"),
    "not finite": (lambda d: _user(d, "a").update(x=[[float("nan"), 1.0]]),
                   r"user 'a': x\[0\] holds a value that is not finite"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_malformed_file_is_named_with_the_user(tmp_path: Path, case: str) -> None:
    train, test = _synthetic_docs()
    mutate, message = BAD[case]
    mutate(train)
    for split, doc in (("train", train), ("test", test)):
        (tmp_path / split).mkdir()
        (tmp_path / split / "part_0.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=message):
        load_leaf(leaf_cfg(tmp_path), seed=0)


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    _, test = _synthetic_docs()
    write_leaf(tmp_path, train=[], test=[])
    (tmp_path / "train" / "a.json").write_text('{"users": ["a"],\n "num_samples": [1,]}')
    (tmp_path / "test" / "a.json").write_text(json.dumps(test))
    with pytest.raises(DataError, match=r"a\.json: not valid JSON: line 2 column"):
        load_leaf(leaf_cfg(tmp_path), seed=0)


def test_a_user_in_two_files_and_empty_folders(tmp_path: Path) -> None:
    one: Users = {"a": ([[1.0]], [0])}
    write_leaf(tmp_path / "dup", train=[one, one], test=[one])
    with pytest.raises(DataError, match=r"part_1\.json: user 'a' is also in .*part_0\.json"):
        load_leaf(leaf_cfg(tmp_path / "dup"), seed=0)
    write_leaf(tmp_path / "empty", train=[], test=[one])
    with pytest.raises(DataError, match=r"empty/train: no \.json files"):
        load_leaf(leaf_cfg(tmp_path / "empty"), seed=0)


@pytest.mark.parametrize(("kind", "x", "y", "message"), [
    (LeafDataset.FEMNIST, [[0.5] * 783], [1], r"784 \(28x28\)"),
    (LeafDataset.FEMNIST, [[1.5] * 784], [1], r"pixel values must be in \[0, 1\]"),
    (LeafDataset.FEMNIST, [pixels(0)], [62], r"y\[0\] = 62: each label must be an integer in "
                                             r"0\.\.61"),
    (LeafDataset.FEMNIST, ["some text"], [1], r"x\[0\] = 'some text'.*reading LEAF femnist"),
    (LeafDataset.SHAKESPEARE, ["abc", "abcd"], ["d", "e"], r"x\[1\] = 'abcd'.*one length"),
    (LeafDataset.SHAKESPEARE, ["abc"], ["de"], r"y\[0\] = 'de'.*single characters"),
    (LeafDataset.SENT140, [["1", "d", "q", "u"]], [1], r"records \[id, date, query, user, text"),
    (LeafDataset.SENT140, [["1", "d", "q", "u", "hi"]], [4], r"y\[0\] = 4.*integer in 0\.\.1"),
    (LeafDataset.SYNTHETIC, [[1.0, None]], [0], r"x\[0\] = \[1\.0, None\]"),
])
def test_examples_of_the_wrong_form_per_dataset(tmp_path: Path, kind: LeafDataset,
                                                x: list[object], y: list[object],
                                                message: str) -> None:
    write_leaf(tmp_path, train=[{"u": (x, y)}], test=[{"u": (x, y)}])
    with pytest.raises(DataError, match=r"train/part_0\.json: user 'u': .*" + message):
        load_leaf(leaf_cfg(tmp_path, leaf_dataset=kind), seed=0)


def test_undetectable_examples_ask_for_the_option(tmp_path: Path) -> None:
    write_leaf(tmp_path, train=[{"u": ([{"a": 1}], [0])}], test=[{"u": ([{"a": 1}], [0])}])
    with pytest.raises(DataError, match=r"user 'u': cannot tell .* set data\.leaf_dataset"):
        load_leaf(leaf_cfg(tmp_path), seed=0)
