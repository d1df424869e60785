"""Tiny Shakespeare: role parsing, the dropping rule, windows and the time-ordered split (exact,
on hand-made texts), bad files, the partitions and the CLI's partition table; the real file in a
slow test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.core.errors import DataError
from fedloom.data import locate, shakespeare
from fedloom.data.config import DataConfig, DatasetName, PartitionKind
from fedloom.data.load import load_federated
from fedloom.data.shakespeare import load_shakespeare, parse_roles, split_point, vocabulary
from tests.data.shakespeare_text import play, use_text

# Role A says "abcd" and later "ef" (8 characters with newlines), B says "xy" (3: dropped with
# seq_len 3, which needs 5). Vocabulary "\nabcdefxy": \n=0 a=1 b=2 c=3 d=4 e=5 f=6 x=7 y=8.
HAND = "A:\nabcd\n\nB:\nxy\n\na:\nef\n"
A_CODES = [1, 2, 3, 4, 0, 5, 6, 0]


def config(root: Path, **kw: object) -> DataConfig:
    return DataConfig(name=DatasetName.SHAKESPEARE, dir=str(root), **kw)  # type: ignore[arg-type]


def test_windows_labels_and_split_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = use_text(tmp_path, monkeypatch, HAND)
    data = load_shakespeare(config(root, seq_len=3, min_chars=0, test_fraction=0.4), seed=0)
    assert data.num_classes == 9 and data.input_shape == (3,) and data.num_clients == 1
    # 5 windows of A: round(0.4 * 5) = 2 test (the last two), 3 train
    assert data.train.x.tolist() == [[1, 2, 3], [2, 3, 4], [3, 4, 0]]  # type: ignore[attr-defined]
    assert data.train.y.tolist() == [4, 0, 5]  # type: ignore[attr-defined]
    assert data.test.x.tolist() == [[4, 0, 5], [0, 5, 6]] and data.test.y.tolist() == [6, 0]
    assert data.train.x.dtype == torch.int16 and data.test.y.dtype == torch.int64  # type: ignore[attr-defined]
    assert [c.tolist() for c in data.client_train] == [[0, 1, 2]]
    assert data.client_test is not None and [c.tolist() for c in data.client_test] == [[0, 1]]
    assert vocabulary(config(root)) == "\nabcdefxy"
    x, y = data.train.batch(torch.tensor([2, 0]))
    assert x.tolist() == [[3, 4, 0], [1, 2, 3]] and y.tolist() == [5, 4]  # codes pass unchanged


def test_roles_merge_case_and_spaces_in_order_of_appearance() -> None:
    text = ("Nurse:\nO!\n\n\n\nLADY  CAPULET:\n\nNURSE:\nAy.\nNo.\n\n"
            "Lady Capulet:\nPeace:\n\nTITUS:\n\nJuliet :\nHa\n")
    roles = parse_roles(text.encode(), source="t.txt")
    # extra blank lines and speeches without text (TITUS) are tolerated; a speech line may end
    # in ":"; the first spelling names the role
    assert roles == {"Nurse": "O!\nAy.\nNo.\n", "LADY CAPULET": "Peace:\n", "Juliet": "Ha\n"}


def test_crlf_line_ends_are_read_as_newlines() -> None:
    assert parse_roles(b"A:\r\nhi\r\n", source="t") == {"A": "hi\n"}


@pytest.mark.parametrize(("min_chars", "kept"), [(0, ["A", "B", "C"]), (9, ["A", "C"]),
                                                 (10, ["C"]), (11, [])])
def test_dropping_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, min_chars: int,
                       kept: list[str]) -> None:
    # texts of 9 (A), 6 (B) and 10 (C) characters; seq_len 4 needs at least 6
    root = use_text(tmp_path, monkeypatch, "A:\nabcdefgh\n\nB:\nabcde\n\nC:\nabcdefghi\n")
    cfg = config(root, seq_len=4, min_chars=min_chars, num_clients=10)
    if not kept:
        with pytest.raises(DataError, match=r"input\.txt: no role has 11 characters.*longest "
                                            r"has 10"):
            load_shakespeare(cfg, seed=0)
        return
    data = load_shakespeare(cfg, seed=0)
    windows = {"A": 5, "B": 2, "C": 6}
    sizes = [int(c.numel()) + int(t.numel())
             for c, t in zip(data.client_train, data.client_test or (), strict=True)]
    assert sizes == [windows[k] for k in kept]


def test_seq_len_sets_the_floor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = use_text(tmp_path, monkeypatch, "A:\nabcdefgh\n\nB:\nabcde\n")  # 9 and 6 characters
    assert load_shakespeare(config(root, seq_len=7, min_chars=0), seed=0).num_clients == 1
    assert load_shakespeare(config(root, seq_len=4, min_chars=0), seed=0).num_clients == 2


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 10_000), fraction=st.floats(0.001, 0.999))
def test_split_point_leaves_both_sides_non_empty(n: int, fraction: float) -> None:
    k = split_point(n, fraction)
    assert 1 <= k <= n - 1
    assert abs((n - k) - fraction * n) <= 0.5 or n - k in (1, n - 1)


def test_time_order_on_a_generated_play(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = play(roles=5, speeches=60)
    root = use_text(tmp_path, monkeypatch, text)
    cfg = config(root, seq_len=10, min_chars=0, num_clients=10, test_fraction=0.25)
    data = load_shakespeare(cfg, seed=0)
    roles = parse_roles(text.encode(), source="t")
    vocab = vocabulary(cfg)
    assert data.client_test is not None and data.num_clients == len(roles)
    for cid, role_text in enumerate(roles.values()):
        train, test = data.client_train[cid], data.client_test[cid]
        n = len(role_text) - 10
        assert (train.numel(), test.numel()) == (split_point(n, 0.25), n - split_point(n, 0.25))
        decode = "".join
        first = data.train.batch(train[:1])[0][0]
        last_x, last_y = data.test.batch(test[-1:])
        # training starts at the role's first characters; testing ends at its last one
        assert decode(vocab[int(c)] for c in first) == role_text[:10]
        assert decode(vocab[int(c)] for c in last_x[0]) + vocab[int(last_y[0])] == \
            role_text[-11:]
    assert len(data.test) == sum(int(t.numel()) for t in data.client_test)


@pytest.mark.parametrize(("raw", "match"), [
    (b"", r"input\.txt: empty"),
    (b"\n \n", r"input\.txt: empty"),
    (b"A:\nhi\n\nB:\nho", r"input\.txt, line 5: no newline at the end .*truncated"),
    (b"A:\nhi\n\nB:\n", r"input\.txt, line 4: the last speaker, 'B', has no speech.*truncated"),
    (b"A:\nhi\n\nno speaker here\n", r"input\.txt, line 4: expected a speaker line"),
    (b"A:\nhi\n\n:\nho\n", r"input\.txt, line 4: expected a speaker line"),
    (b"A:\nhi\n\nB:\nh\xffo\n", r"input\.txt, line 5: not UTF-8"),
    (b"A:\n\nB:\n\n", r"input\.txt: no speech"),
])
def test_bad_files_name_the_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          raw: bytes, match: str) -> None:
    root = use_text(tmp_path, monkeypatch, raw)
    with pytest.raises(DataError, match=match):
        load_shakespeare(config(root), seed=0)


def test_checksum_is_verified(tmp_path: Path) -> None:
    (tmp_path / "tiny-shakespeare").mkdir()
    (tmp_path / "tiny-shakespeare" / "input.txt").write_text("A:\nhi\n")
    with pytest.raises(DataError, match=r"tiny-shakespeare/input\.txt: checksum mismatch"):
        load_shakespeare(config(tmp_path), seed=0)


def test_missing_file_says_where_it_looked(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locate, "search_roots", lambda data_dir=None: [Path(data_dir)])
    with pytest.raises(DataError, match=r"tiny_shakespeare: cannot find input\.txt"):
        load_shakespeare(config(tmp_path / "nowhere"), seed=0)


def test_natural_keeps_the_largest_roles_and_other_partitions_pool_train_windows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = use_text(tmp_path, monkeypatch, play(roles=6, speeches=80))
    full = load_shakespeare(config(root, seq_len=8, min_chars=0), seed=0)
    sizes = [int(c.numel()) for c in full.client_train]
    natural = load_federated(config(root, seq_len=8, min_chars=0, num_clients=3), seed=0)
    largest = sorted(range(6), key=lambda k: -sizes[k])[:3]
    assert [int(c.numel()) for c in natural.client_train] == [sizes[k] for k in sorted(largest)]
    assert natural.client_test is not None and len(natural.client_test) == 3
    iid = load_federated(config(root, seq_len=8, min_chars=0, num_clients=4,
                                partition=PartitionKind.IID), seed=0)
    pooled = torch.cat(list(iid.client_train)).sort().values
    assert torch.equal(pooled, torch.arange(len(full.train)))  # every training window, once
    assert iid.client_test is None and len(iid.test) == len(full.test)


@pytest.mark.slow
def test_real_tiny_shakespeare() -> None:
    path = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tiny-shakespeare"
    if not (path / "input.txt").is_file():
        pytest.skip("no ../shared/data/tiny-shakespeare/input.txt")
    cfg = DataConfig(name=DatasetName.SHAKESPEARE, dir=str(path.parent), num_clients=1000)
    data = load_federated(cfg, seed=0)
    assert data.num_classes == 65 and vocabulary(cfg)[:3] == "\n !"
    assert data.num_clients == 225 and data.client_test is not None
    assert len(data.train) + len(data.test) == 904_261 + 100_475
    assert data.train.x.shape[1:] == (80,)  # type: ignore[attr-defined]
    shakespeare.clear_cache()
