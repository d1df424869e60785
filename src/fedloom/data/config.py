"""Configuration of the federated dataset: which data, how it is split over clients."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fedloom.core.validate import Problems


class DatasetName(StrEnum):
    MNIST = "mnist"
    FASHION_MNIST = "fashion_mnist"
    SYNTHETIC = "synthetic"  # FedProx Synthetic(alpha, beta)
    SYNTHETIC_IID = "synthetic_iid"  # FedProx's IID synthetic variant
    LEAF_SYNTHETIC = "leaf_synthetic"
    GENERATED = "generated"  # clients made on demand (fedloom.data.population): any population
    SHAKESPEARE = "shakespeare"  # Tiny Shakespeare, one client per speaking role
    ADULT = "adult"  # UCI Adult (CSV), clients by a column's values
    LEAF = "leaf"  # LEAF's JSON folders (FEMNIST, Shakespeare, Sent140, Synthetic)
    CIFAR10 = "cifar10"  # CIFAR-10, binary version


SYNTHETIC_NAMES = frozenset(
    {DatasetName.SYNTHETIC, DatasetName.SYNTHETIC_IID, DatasetName.LEAF_SYNTHETIC,
     DatasetName.GENERATED}
)

#: datasets whose examples come with their own clients (``data.partition=natural``)
NATURAL_NAMES = SYNTHETIC_NAMES | {DatasetName.SHAKESPEARE, DatasetName.ADULT, DatasetName.LEAF}


class PartitionKind(StrEnum):
    IID = "iid"
    DIRICHLET = "dirichlet"  # label skew, Dir(alpha) proportions per class
    SHARDS = "shards"  # sort by label, equal shards, k per client (FedAvg's pathological split)
    QUANTITY = "quantity"  # lognormal client sizes, IID labels
    NATURAL = "natural"  # the dataset's own clients (generators' users, speakers, LEAF users)


class LeafDataset(StrEnum):
    """The LEAF datasets ``data.name=leaf`` reads (:mod:`fedloom.data.leaf`)."""

    FEMNIST = "femnist"
    SHAKESPEARE = "shakespeare"
    SENT140 = "sent140"
    SYNTHETIC = "synthetic"


#: UCI Adult's 14 attributes in file order (adult.names; the label follows): ``data.column``
#: names a categorical one, ``data.features`` picks which become features
COLUMNS: tuple[str, ...] = (
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week",
    "native-country",
)
NUMERIC: tuple[str, ...] = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss",
                            "hours-per-week")
CATEGORICAL: tuple[str, ...] = tuple(c for c in COLUMNS if c not in NUMERIC)


class FeatureSet(StrEnum):
    """Which columns become features (``data.features``)."""

    ALL = "all"  # every column: 105 features on the real files
    CATEGORICAL = "categorical"  # the 8 categorical columns only: 99 (the AFL and q-FFL papers')

    @property
    def columns(self) -> tuple[str, ...]:
        return COLUMNS if self == FeatureSet.ALL else CATEGORICAL


@dataclass(frozen=True, slots=True, kw_only=True)
class DataConfig:
    """The ``data`` section of a run config.

    ``partition`` defaults to ``natural`` for the synthetic datasets and ``iid`` otherwise;
    ``alpha`` is the Dirichlet concentration (default 0.5) or Synthetic's alpha (default 1.0).
    ``client_test_fraction`` > 0 holds out that share of each client's training examples as its
    local test split (for federated evaluation) where the dataset has no natural one.
    ``examples_per_client`` and ``test_clients`` size the ``generated`` population's clients and
    its central test set (10 held-out examples of each of that many clients).
    ``leaf_dir`` (else ``dir``) is LEAF's ``data`` folder (``train/`` and ``test/``),
    ``leaf_dataset`` which LEAF dataset it holds (null: detected from the examples), and
    ``leaf_text_features`` the hashed bag-of-words width of Sent140 (:mod:`fedloom.data.leaf`).
    ``column`` and ``groups`` make ``adult``'s natural clients (:mod:`fedloom.data.adult`): one
    per value of the categorical ``column`` (null: ``education``), or with ``groups`` one per
    listed group of values plus one for every other value (``[[Doctorate]]``: PhD vs the rest);
    ``features`` is ``all`` its columns or only the ``categorical`` ones (as the q-FFL paper).
    """

    name: DatasetName = DatasetName.MNIST
    dir: str | None = None
    num_clients: int = 100
    partition: PartitionKind | None = None
    alpha: float | None = None
    beta: float = 1.0
    shards_per_client: int = 2
    quantity_sigma: float = 1.0
    min_examples: int = 1
    num_features: int = 60
    num_classes: int = 10
    num_clusters: int = 2
    test_fraction: float = 0.1
    client_test_fraction: float = 0.0
    examples_per_client: int = 20
    test_clients: int = 1000
    seq_len: int = 80
    min_chars: int = 200
    leaf_dir: str | None = None
    leaf_dataset: LeafDataset | None = None
    leaf_text_features: int = 512
    column: str | None = None
    groups: tuple[tuple[str, ...], ...] = ()
    features: FeatureSet = FeatureSet.ALL

    def __post_init__(self) -> None:
        synthetic = self.name in SYNTHETIC_NAMES
        if self.partition is None:
            default = PartitionKind.NATURAL if self.name in NATURAL_NAMES else PartitionKind.IID
            object.__setattr__(self, "partition", default)
        if self.alpha is None:
            object.__setattr__(self, "alpha", 1.0 if synthetic else 0.5)
        p = Problems()
        p.check(self.num_clients >= 1, "num_clients", self.num_clients, "must be >= 1")
        p.check(self.partition != PartitionKind.NATURAL or self.name in NATURAL_NAMES,
                "partition", str(self.partition), "'natural' exists only for "
                + ", ".join(sorted(NATURAL_NAMES)))
        assert self.alpha is not None
        if self.partition == PartitionKind.DIRICHLET:
            p.check(self.alpha > 0, "alpha", self.alpha, "Dirichlet concentration must be > 0")
        elif synthetic:
            p.check(self.alpha >= 0, "alpha", self.alpha, "Synthetic's alpha must be >= 0")
        p.check(self.beta >= 0, "beta", self.beta, "must be >= 0")
        p.check(self.shards_per_client >= 1, "shards_per_client", self.shards_per_client,
                "must be >= 1")
        p.check(self.quantity_sigma >= 0, "quantity_sigma", self.quantity_sigma, "must be >= 0")
        p.check(self.min_examples >= 0, "min_examples", self.min_examples, "must be >= 0")
        p.check(self.num_features >= 1, "num_features", self.num_features, "must be >= 1")
        p.check(self.num_classes >= 2, "num_classes", self.num_classes, "must be >= 2")
        p.check(self.num_clusters >= 1, "num_clusters", self.num_clusters, "must be >= 1")
        p.check(0 < self.test_fraction < 1, "test_fraction", self.test_fraction,
                "must be in (0, 1)")
        p.check(0 <= self.client_test_fraction < 1, "client_test_fraction",
                self.client_test_fraction, "must be in [0, 1)")
        p.check(self.examples_per_client >= 1, "examples_per_client", self.examples_per_client,
                "must be >= 1")
        p.check(self.test_clients >= 1, "test_clients", self.test_clients, "must be >= 1")
        p.check(self.seq_len >= 1, "seq_len", self.seq_len, "must be >= 1")
        p.check(self.min_chars >= 0, "min_chars", self.min_chars, "must be >= 0")
        p.check(self.leaf_text_features >= 1, "leaf_text_features", self.leaf_text_features,
                "must be >= 1 (hash buckets of Sent140's bag of words)")
        _check_adult_clients(self, p)
        if self.name == DatasetName.GENERATED:
            p.check(self.partition == PartitionKind.NATURAL, "partition", str(self.partition),
                    "the generated population has only its natural clients")
            p.check(self.client_test_fraction == 0, "client_test_fraction",
                    self.client_test_fraction, "the generated population has no local test "
                    "splits (its clients exist only while they train)")
        p.raise_if_any()


def _check_adult_clients(cfg: DataConfig, p: Problems) -> None:
    """``column`` and ``groups`` (adult's natural clients) and ``features``: adult only."""
    p.check(cfg.features == FeatureSet.ALL or cfg.name == DatasetName.ADULT, "features",
            str(cfg.features), "only for data.name = adult")
    for key, value, unset in (("column", cfg.column, None), ("groups", cfg.groups, ())):
        if value == unset:
            continue
        if cfg.name != DatasetName.ADULT:
            p.add(key, value, "only for data.name = adult")
        elif cfg.partition != PartitionKind.NATURAL:
            p.add(key, value, "only with data.partition = natural (it chooses the natural "
                  "clients)")
    p.check(cfg.column is None or cfg.column in CATEGORICAL, "column", cfg.column,
            f"must be one of adult's categorical columns: {', '.join(CATEGORICAL)}")
    seen: set[str] = set()
    for i, group in enumerate(cfg.groups):
        p.check(len(group) > 0, f"groups[{i}]", list(group), "must list at least one value")
        for value in group:
            p.check(value not in seen, f"groups[{i}]", list(group),
                    f"{value!r} is listed more than once")
            seen.add(value)
