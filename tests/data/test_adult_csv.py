"""Adult's text format and its encoding: parsing, missing values, statistics from training only."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.core.errors import DataError
from fedloom.data.adult_csv import AdultEncoding, parse_adult
from fedloom.data.config import NUMERIC, FeatureSet
from tests.data.adult_rows import TEST, TEST_HEADER, TRAIN, random_lines

R15, R2 = math.sqrt(1.5), math.sqrt(2.0)


def test_parse_reads_fields_missing_values_comments_and_dotted_labels() -> None:
    rows = parse_adult("\n".join([TEST_HEADER, *TRAIN, "", TEST[0]]) + "\n\n", source="f")
    assert len(rows) == 4
    assert rows.labels.tolist() == [0, 1, 0, 1]
    assert rows.numeric[0].tolist() == [20, 100, 13, 0, 0, 40]
    assert math.isnan(rows.numeric[2, NUMERIC.index("age")])
    assert rows.categorical["workclass"].tolist() == ["Private", "Self-emp-inc", "?",
                                                      "Never-worked"]
    assert rows.categorical["native-country"][1] == "?"


def test_parse_accepts_crlf_and_no_spaces() -> None:
    line = TRAIN[0].replace(", ", ",") + "\r\n"
    assert parse_adult(line, source="f").categorical["education"].tolist() == ["Bachelors"]


def test_parse_of_nothing_is_empty() -> None:
    rows = parse_adult("|only a comment\n\n", source="f")
    assert len(rows) == 0 and rows.numeric.shape == (0, 6)


@pytest.mark.parametrize(("line", "message"), [
    (TRAIN[0].rsplit(",", 1)[0], r"f, line 2: expected 15 comma-separated fields .* got 14"),
    (TRAIN[0] + ", extra", r"f, line 2: expected 15 .* got 16"),
    (TRAIN[0].replace("20,", "twenty,", 1), r"f, line 2: column 'age' is numeric, got 'twenty'"),
    (TRAIN[0].replace(" 100,", " nan,", 1), r"f, line 2: column 'fnlwgt' must be a finite"),
    (TRAIN[0].replace("<=50K", "50K"), r"f, line 2: unknown label '50K'"),
    (TRAIN[0].replace("<=50K", "<=50K.."), r"f, line 2: unknown label '<=50K\.\.'"),
    (TRAIN[0].replace(" Sales,", " ,"), r"f, line 2: column 'occupation' is empty"),
])
def test_malformed_lines_name_the_file_and_line(line: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_adult(f"{TRAIN[1]}\n{line}\n{TRAIN[2]}\n", source="f")


def test_encoding_by_hand() -> None:
    """Features of the three training rows, worked out by hand (tests/data/adult_rows.py):
    age 20, 40, ? -> mean 30, std 10; fnlwgt 100, 300, 200 -> +-sqrt(1.5); education-num and
    capital-gain -> -1/sqrt(2), sqrt(2); capital-loss constant -> 0; hours 40, 60, 50."""
    encoding = AdultEncoding.fit(parse_adult("\n".join(TRAIN), source="train"))
    assert encoding.mean.tolist() == pytest.approx([30, 200, 14, 1000 / 3, 0, 50])
    assert encoding.std.tolist() == pytest.approx([10, math.sqrt(20000 / 3), R2,
                                                   1000 * R2 / 3, 1, math.sqrt(200 / 3)])
    assert encoding.feature_names() == [
        "age", "workclass=Private", "workclass=Self-emp-inc", "fnlwgt",
        "education=Bachelors", "education=Doctorate", "education-num",
        "marital-status=Married-civ-spouse", "marital-status=Never-married",
        "occupation=Prof-specialty", "occupation=Sales", "relationship=Husband",
        "relationship=Own-child", "race=Black", "race=White", "sex=Female", "sex=Male",
        "capital-gain", "capital-loss", "hours-per-week",
        "native-country=Canada", "native-country=United-States"]
    x = encoding.transform(parse_adult("\n".join(TRAIN), source="train"))
    h = 1 / R2
    expected = np.array([
        [-1, 1, 0, -R15, 1, 0, -h, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, -h, 0, -R15, 0, 1],
        [1, 0, 1, R15, 0, 1, R2, 1, 0, 1, 0, 1, 0, 1, 0, 0, 1, R2, 0, R15, 0, 0],
        [0, 0, 0, 0, 1, 0, -h, 0, 1, 0, 1, 0, 1, 0, 1, 1, 0, -h, 0, 0, 1, 0],
    ])
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, expected, atol=1e-6)


def test_categorical_features_are_the_one_hot_blocks_alone() -> None:
    rows = parse_adult("\n".join(TRAIN), source="train")
    every = AdultEncoding.fit(rows)
    categorical = AdultEncoding.fit(rows, FeatureSet.CATEGORICAL)
    keep = [i for i, name in enumerate(every.feature_names()) if "=" in name]
    assert categorical.num_features == 16 == len(keep)
    assert categorical.feature_names() == [every.feature_names()[i] for i in keep]
    np.testing.assert_array_equal(categorical.transform(rows), every.transform(rows)[:, keep])
    as_text = AdultEncoding.fit(rows, "categorical")  # type: ignore[arg-type]  # from Python
    assert as_text.columns == categorical.columns


def test_test_rows_use_the_training_statistics_and_unseen_categories_are_zero() -> None:
    encoding = AdultEncoding.fit(parse_adult("\n".join(TRAIN), source="train"))
    x = encoding.transform(parse_adult("\n".join([TEST_HEADER, *TEST]), source="test"))
    names = encoding.feature_names()
    row = dict(zip(names, x[0].tolist()))
    assert row["age"] == pytest.approx(2.0)  # (50 - 30) / 10: the training mean and std
    assert row["education-num"] == 0.0  # 14 is the training mean
    assert row["fnlwgt"] == 0.0
    assert all(row[n] == 0 for n in names if n.startswith(("workclass=", "education=")))
    assert row["native-country=Canada"] == 1.0
    assert dict(zip(names, x[1].tolist()))["education=Doctorate"] == 1.0


def test_an_all_missing_numeric_column_is_zero() -> None:
    lines = ["?" + line[line.index(","):] for line in TRAIN]  # age missing everywhere
    encoding = AdultEncoding.fit(parse_adult("\n".join(lines), source="f"))
    assert (encoding.mean[0], encoding.std[0]) == (0.0, 1.0)
    x = encoding.transform(parse_adult("\n".join(lines), source="f"))
    assert (x[:, 0] == 0).all()


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 40), seed=st.integers(0, 2**16))
def test_training_features_are_standardised_and_one_hot(n: int, seed: int) -> None:
    rows = parse_adult("\n".join(random_lines(n, seed)), source="f")
    encoding = AdultEncoding.fit(rows)
    x = encoding.transform(rows).astype(np.float64)
    names = encoding.feature_names()
    assert x.shape == (n, encoding.num_features) == (n, len(names))
    for column in NUMERIC:
        z = x[:, names.index(column)]
        assert abs(z.mean()) < 1e-5
        assert z.std() == pytest.approx(1.0, abs=1e-5) or np.ptp(z) == 0
    for column in encoding.categories:
        block = x[:, [i for i, name in enumerate(names) if name.startswith(f"{column}=")]]
        missing = rows.categorical[column] == "?"
        assert set(np.unique(block)) <= {0.0, 1.0}
        np.testing.assert_array_equal(block.sum(1), (~missing).astype(np.float64))
