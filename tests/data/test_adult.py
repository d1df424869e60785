"""UCI Adult as a federated dataset: files, clients by a column, groups, bad input, real files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.app.build import build_run
from fedloom.app.config import load_config
from fedloom.core.errors import ConfigError, DataError
from fedloom.data import adult
from fedloom.data.config import DataConfig, DatasetName, FeatureSet, PartitionKind
from fedloom.data.load import load_federated
from tests.data.adult_rows import TEST, TRAIN, random_lines, use_files, write_adult


@pytest.fixture
def small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The hand-worked rows (tests/data/adult_rows.py) as files; returns the data dir."""
    use_files(monkeypatch, write_adult(tmp_path, TRAIN, TEST))
    return str(tmp_path)


def adult_cfg(data_dir: str, **kw: object) -> DataConfig:
    return DataConfig(name=DatasetName.ADULT, dir=data_dir, **kw)  # type: ignore[arg-type]


def as_lists(tensors: object) -> list[list[int]]:
    return [t.tolist() for t in tensors]  # type: ignore[attr-defined]


def test_loads_the_published_split_with_one_client_per_education(small: str) -> None:
    data = load_federated(adult_cfg(small), seed=0)
    assert (len(data.train), len(data.test)) == (3, 2)
    assert data.input_shape == (22,) and data.num_classes == 2
    assert data.arrays().x.dtype == torch.float32
    assert data.arrays().y.tolist() == [0, 1, 0] and data.test.y.tolist() == [1, 0]
    # education, sorted: Bachelors (train rows 0, 2), Doctorate (row 1); test Masters is no one's
    assert as_lists(data.client_train) == [[0, 2], [1]]
    assert data.client_test is not None and as_lists(data.client_test) == [[], [1]]
    assert data.test.x[0, 0].item() == pytest.approx(2.0)  # age 50 with the training mean/std


def test_groups_make_the_listed_values_and_the_rest(small: str) -> None:
    data = load_federated(adult_cfg(small, groups=(("Doctorate",),)), seed=0)
    assert as_lists(data.client_train) == [[1], [0, 2]]
    assert data.client_test is not None
    assert as_lists(data.client_test) == [[1], [0]]  # the unseen Masters goes to "other"


def test_groups_that_cover_every_value_have_no_other_client(small: str) -> None:
    data = load_federated(adult_cfg(small, column="sex", groups=(("Male",), ("Female",))), seed=0)
    assert as_lists(data.client_train) == [[0, 1], [2]]


def test_missing_values_of_the_column_form_their_own_client(small: str) -> None:
    data = load_federated(adult_cfg(small, column="native-country"), seed=0)
    # sorted values: '?' (row 1), Canada (row 2), United-States (row 0)
    assert as_lists(data.client_train) == [[1], [2], [0]]
    assert data.client_test is not None and as_lists(data.client_test) == [[], [0], [1]]


def test_natural_keeps_the_largest_clients_when_fewer_are_asked(small: str) -> None:
    data = load_federated(adult_cfg(small, num_clients=1), seed=0)
    assert as_lists(data.client_train) == [[0, 2]]


def test_other_partitions_pool_and_resplit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_files(monkeypatch, write_adult(tmp_path, random_lines(60, 1), random_lines(20, 2)))
    data = load_federated(adult_cfg(str(tmp_path), partition=PartitionKind.IID, num_clients=4),
                          seed=0)
    assert data.client_test is None and data.num_clients == 4
    assert sorted(torch.cat(list(data.client_train)).tolist()) == list(range(60))


def test_a_group_value_not_in_training_is_a_config_error(small: str) -> None:
    with pytest.raises(ConfigError, match=r"data.groups\[1\] = \['Masters'\]: 'Masters' is not "
                       r"a value of column 'education' in .*adult.data \(its values: "
                       r"Bachelors, Doctorate\)"):
        load_federated(adult_cfg(small, groups=(("Doctorate",), ("Masters",))), seed=0)


@pytest.mark.parametrize(("kw", "message"), [
    ({"column": "age"}, r"column = 'age': must be one of adult's categorical columns"),
    ({"groups": (("Doctorate",), ("Masters", "Doctorate"))},
     r"groups\[1\] = \['Masters', 'Doctorate'\]: 'Doctorate' is listed more than once"),
    ({"groups": ((),)}, r"groups\[0\] = \[\]: must list at least one value"),
    ({"groups": (("Doctorate",),), "partition": PartitionKind.IID},
     r"groups = .*only with data.partition = natural"),
])
def test_bad_column_options_are_config_errors(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DataConfig(name=DatasetName.ADULT, **kw)  # type: ignore[arg-type]


def test_adult_options_belong_to_adult_only() -> None:
    with pytest.raises(ConfigError, match=r"(?s)3 problems.*features = 'categorical': only for "
                       r"data.name = adult.*column = 'education': only for .*groups = "):
        DataConfig(name=DatasetName.MNIST, column="education", groups=(("a",),),
                   features=FeatureSet.CATEGORICAL)


def test_categorical_features_only(small: str) -> None:
    data = load_federated(adult_cfg(small, features=FeatureSet.CATEGORICAL), seed=0)
    assert data.input_shape == (16,)
    assert data.arrays().x[1].tolist() == [0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 0, 1, 0, 0]


@pytest.mark.parametrize(("bad", "message"), [
    (TRAIN[1].replace("Male, 1000", "Male, lots"),
     r"adult.data, line 2: column 'capital-gain' is numeric, got 'lots'"),
    (TRAIN[1].replace(", >50K", ""), r"adult.data, line 2: expected 15 .* got 14"),
    (TRAIN[1].replace(">50K", "rich"), r"adult.data, line 2: unknown label 'rich'"),
])
def test_a_malformed_training_line_names_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str, message: str
) -> None:
    use_files(monkeypatch, write_adult(tmp_path, [TRAIN[0], bad, TRAIN[2]], TEST))
    with pytest.raises(DataError, match=message):
        load_federated(adult_cfg(str(tmp_path)), seed=0)


def test_a_malformed_test_line_counts_the_comment_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_files(monkeypatch, write_adult(tmp_path, TRAIN, [TEST[0], TEST[1].replace("<=50K.", "?")]))
    with pytest.raises(DataError, match=r"adult.test, line 3: unknown label '\?'"):
        load_federated(adult_cfg(str(tmp_path)), seed=0)


def test_a_training_file_without_rows_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_files(monkeypatch, write_adult(tmp_path, ["| just a comment"], TEST))
    with pytest.raises(DataError, match=r"adult.data: no data rows"):
        load_federated(adult_cfg(str(tmp_path)), seed=0)


def test_a_file_failing_its_checksum_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_files(monkeypatch, write_adult(tmp_path, TRAIN, TEST))
    (tmp_path / "adult" / "adult.data").write_text("\n".join(TRAIN[:2]) + "\n")
    with pytest.raises(DataError, match=r"adult.data: checksum mismatch"):
        load_federated(adult_cfg(str(tmp_path)), seed=0)


def test_the_real_digests_refuse_other_files(tmp_path: Path) -> None:
    write_adult(tmp_path, TRAIN, TEST)
    adult.clear_cache()
    with pytest.raises(DataError, match=r"checksum mismatch"):
        load_federated(adult_cfg(str(tmp_path)), seed=0)


def test_missing_files_say_where_they_were_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ../shared/data from here
    monkeypatch.setattr("fedloom.data.locate.search_roots", lambda d: [tmp_path])
    with pytest.raises(DataError, match=r"adult: cannot find adult.data, adult.test"):
        load_federated(adult_cfg(str(tmp_path)), seed=0)


def test_non_utf8_bytes_name_the_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = write_adult(tmp_path, TRAIN, TEST)
    path = tmp_path / "adult" / "adult.data"
    raw = path.read_bytes().replace(b"Canada", b"Can\xe9da")
    path.write_bytes(raw)
    sha = dict(files.sha256, **{"adult.data": hashlib.sha256(raw).hexdigest()})
    use_files(monkeypatch, type(files)(key="adult", folders=("adult",), sha256=sha))
    with pytest.raises(DataError, match=r"adult.data, line 3: not UTF-8"):
        load_federated(adult_cfg(str(tmp_path)), seed=0)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.sampled_from(["a", "b", "c", "?"]), min_size=1, max_size=30),
       test=st.lists(st.sampled_from(["a", "b", "c", "d", "?"]), max_size=30),
       grouped=st.lists(st.sampled_from(["a", "b", "c", "?"]), unique=True, max_size=3))
def test_column_clients_are_disjoint_and_cover_the_training_rows(
    values: list[str], test: list[str], grouped: list[str]
) -> None:
    train_v, test_v = np.array(values), np.array(test, dtype=str)
    groups = tuple((v,) for v in grouped if v in values)
    names, train, test_idx = adult.column_clients(train_v, test_v, column="c", groups=groups)
    assert len(names) == len(train) == len(test_idx)
    assert all(part.size > 0 for part in train)
    everything = np.sort(np.concatenate(train))
    np.testing.assert_array_equal(everything, np.arange(len(values)))
    for name, tr, te in zip(names, train, test_idx):
        members = set(name.split("+")) if name != adult.OTHER else set(values) - set(grouped)
        assert set(train_v[tr].tolist()) <= members
        if name != adult.OTHER:
            assert set(test_v[te].tolist()) <= members
    tested = np.concatenate(test_idx)
    assert len(tested) == len(np.unique(tested))  # no test row in two clients


@pytest.mark.slow
def test_the_real_files() -> None:
    root = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    if not (root / "adult" / "adult.data").exists():
        pytest.skip("../shared/data/adult is absent")
    data = load_federated(DataConfig(name=DatasetName.ADULT, dir=str(root), num_clients=2,
                                     groups=(("Doctorate",),)), seed=0)
    assert (len(data.train), len(data.test)) == (32_561, 16_281)
    assert data.input_shape == (105,)
    assert [len(c) for c in data.client_train] == [413, 32_148]
    assert data.client_test is not None and [len(c) for c in data.client_test] == [181, 16_100]
    assert int(data.arrays().y.sum()) == 7_841  # >50K: 24.08% of the training rows
    everyone = load_federated(DataConfig(name=DatasetName.ADULT, dir=str(root),
                                         features=FeatureSet.CATEGORICAL), seed=0)
    assert everyone.num_clients == 16  # the 16 education levels
    assert everyone.input_shape == (99,)


def test_a_two_round_qffl_run_on_small_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configs/qffl_adult.yaml end to end on 80 generated rows (PhD vs the rest)."""
    train, test = random_lines(80, 3), random_lines(40, 4, dot=True)
    use_files(monkeypatch, write_adult(tmp_path, train, test))
    cfg = load_config("configs/qffl_adult.yaml", [
        "rounds=2", "eval.every=1", f"data.dir={tmp_path}", "fleet.threads=1"])
    rows = build_run(cfg).run().rows
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["num_results"] == 2 for r in rows)
    last = rows[-1]
    for key in ("test_accuracy", "fed_accuracy_mean", "fed_accuracy_worst10"):
        value = last[key]
        assert isinstance(value, float) and 0.0 <= value <= 1.0
    worst, mean = last["fed_accuracy_worst10"], last["fed_accuracy_mean"]
    assert isinstance(worst, float) and isinstance(mean, float) and worst <= mean
