"""Tables on disk: ``csv:PATH``, ``parquet:PATH`` and ``hf:PATH`` (a ``save_to_disk`` dataset).

Files are read with pyarrow (``pyarrow.csv``, ``pyarrow.parquet``) and Hugging Face
``datasets`` (``load_from_disk``); this module only checks the columns and turns them into
arrays. Every problem is one `DatasetError` naming the file and the column.

- The label column (``data.label``) holds class names or integer ids; classes are the sorted
  distinct labels (numerically when every label is an integer), or ``data.classes`` in order.
- Feature columns (``data.features``, else every other column but ``data.partition_by``)
  are numeric, or lists/arrays of numbers (one ``hf:`` column of fixed-shape arrays keeps its
  shape: ``(T, F)`` sequences stay 2-D). Several columns are flattened side by side.
- Features are standardised with the mean and standard deviation of the training rows only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv
import pyarrow.parquet
import torch
from sklearn.model_selection import train_test_split

from fedcomp.data.bundle import DataOptions, DatasetBundle, TensorExamples
from fedcomp.errors import DatasetError

TABLE_READERS = {
    # an empty csv field is a missing value, in text columns too
    ".csv": lambda path: pyarrow.csv.read_csv(
        path, convert_options=pyarrow.csv.ConvertOptions(strings_can_be_null=True)),
    ".parquet": pyarrow.parquet.read_table,
}


def read_table(path: Path, kind: str = "") -> pa.Table:
    """A ``.csv`` or ``.parquet`` file (``kind``, else the file's suffix) as an Arrow table."""
    if not path.is_file():
        raise DatasetError(f"table file not found: {path}")
    kind = kind or path.suffix.lower()
    reader = TABLE_READERS.get(kind)
    if reader is None:
        raise DatasetError(f"{path}: unknown table format {kind!r}; use one of {', '.join(TABLE_READERS)}")
    try:
        return reader(str(path))
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"cannot read table {path}: {exc}") from exc


def read_saved_dataset(path: Path) -> tuple[pa.Table, pa.Table | None]:
    """A ``datasets`` ``save_to_disk`` folder: one ``Dataset``, or a ``DatasetDict`` with train (and test)."""
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        saved = load_from_disk(str(path), keep_in_memory=True)
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise DatasetError(f"cannot load the Hugging Face dataset saved at {path} (save_to_disk): {exc}") from exc
    if isinstance(saved, Dataset):
        return saved.with_format("arrow")[:], None
    if isinstance(saved, DatasetDict) and "train" in saved:
        test = saved["test"].with_format("arrow")[:] if "test" in saved else None
        return saved["train"].with_format("arrow")[:], test
    splits = ", ".join(saved) if isinstance(saved, DatasetDict) else type(saved).__name__
    raise DatasetError(f"the Hugging Face dataset at {path} has splits {splits}; it needs a 'train' split")


def _column(table: pa.Table, name: str, source: object, role: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise DatasetError(f"{source} has no {role} column {name!r} (its columns: {', '.join(table.column_names)})")
    column = table.column(name)
    if column.null_count:
        first = pc.index(pc.is_null(column), True).as_py()
        raise DatasetError(f"{role} column {name!r} in {source} has {column.null_count} missing values "
                           f"(the first in row {first}); fill or drop them first")
    return column


def _is_numeric(kind: pa.DataType) -> bool:
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return True
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _is_numeric(kind.value_type)
    if isinstance(kind, pa.ExtensionType):  # datasets' ArrayXD
        return _is_numeric(kind.storage_type)
    return False


def feature_columns(table: pa.Table, options: DataOptions) -> tuple[str, ...]:
    """``data.features``, or every column except the label and ``data.partition_by``."""
    if options.features:
        return options.features
    return tuple(c for c in table.column_names if c not in (options.label, options.partition_by))


def table_examples(table: pa.Table, features: tuple[str, ...], source: object) -> np.ndarray:
    """The feature columns as float32 ``(rows, *example_shape)``, refused if not numeric or incomplete."""
    if not features:
        raise DatasetError(f"{source} has no feature columns besides the label")
    arrays = []
    for name in features:
        column = _column(table, name, source, "feature")
        if not _is_numeric(column.type):
            raise DatasetError(f"feature column {name!r} in {source} is categorical ({column.type}); encode it as "
                               "numbers (e.g. one-hot columns) or leave it out with data.features=COLUMN,...")
        try:
            scalar = not (pa.types.is_nested(column.type) or isinstance(column.type, pa.ExtensionType))
            values = np.asarray(column.to_numpy() if scalar else column.to_pylist(), dtype=np.float32)
        except (ValueError, TypeError) as exc:
            raise DatasetError(f"feature column {name!r} in {source} holds arrays of different shapes or missing "
                               f"entries: {exc}") from exc
        missing = np.isnan(values.reshape(len(values), -1)).any(axis=1)
        if missing.any():
            raise DatasetError(f"feature column {name!r} in {source} has {int(missing.sum())} missing values "
                               f"(the first in row {int(np.argmax(missing))}); fill or drop them first")
        arrays.append(values)
    if len(arrays) == 1 and arrays[0].ndim > 1:
        return arrays[0]
    return np.concatenate([a.reshape(len(a), -1) for a in arrays], axis=1)


def table_labels(table: pa.Table, label: str, source: object) -> np.ndarray:
    """The label column as class names (str): integral numbers become their integer text."""
    column = _column(table, label, source, "label")
    if pa.types.is_floating(column.type):
        values = column.to_numpy()
        if not np.all(values == np.round(values)):
            raise DatasetError(f"label column {label!r} in {source} holds non-integer numbers; labels must be "
                               "class names or integer class ids")
        return np.asarray([str(int(v)) for v in values])
    if not (pa.types.is_integer(column.type) or pa.types.is_boolean(column.type)
            or pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
            or pa.types.is_dictionary(column.type)):
        raise DatasetError(f"label column {label!r} in {source} has type {column.type}; labels must be class "
                           "names or integer class ids")
    return np.asarray([str(v) for v in column.to_pylist()])


def _class_order(name: str) -> tuple[int, int, str]:
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


def class_names(found: Iterable[str], options: DataOptions) -> tuple[str, ...]:
    """``data.classes`` when set, else the distinct ``found`` names, integers in numeric order."""
    return options.classes or tuple(sorted(set(found), key=_class_order))


def encode_labels(names: np.ndarray, classes: tuple[str, ...], source: object) -> np.ndarray:
    """Class names to label ids (positions in ``classes``); a name outside ``classes`` is refused."""
    index = {name: i for i, name in enumerate(classes)}
    outside = sorted(set(names.tolist()) - set(index))
    if outside:
        row = int(np.flatnonzero(names == outside[0])[0])
        raise DatasetError(f"{source} has labels outside the classes ({', '.join(classes)}): "
                           f"{', '.join(map(repr, outside[:5]))} (the first in row {row})")
    return np.asarray([index[name] for name in names.tolist()], dtype=np.int64)


def hold_out(labels: np.ndarray, fraction: float, seed: int, source: object) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, test) row indices holding out ``fraction``, stratified by label where every class allows it."""
    rows = len(labels)
    test_rows = int(np.ceil(rows * fraction))
    if rows < 2 or test_rows >= rows:
        raise DatasetError(f"{source} has {rows} examples, too few to hold out a {fraction:g} test share "
                           "(data.test_fraction); add more examples or a separate test set")
    counts = np.unique(labels, return_counts=True)[1]
    stratify = labels if counts.min() >= 2 and len(counts) <= min(test_rows, rows - test_rows) else None
    train, test = train_test_split(np.arange(rows), test_size=test_rows, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(test)


@dataclass(frozen=True)
class Standardiser:
    """Per-feature mean and standard deviation, measured on training examples only."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, train: np.ndarray) -> "Standardiser":
        std = train.std(axis=0)
        return cls(train.mean(axis=0), np.where(std > 0, std, 1.0).astype(np.float32))

    def __call__(self, examples: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((examples - self.mean) / self.std).astype(np.float32))


def load_table(path: Path, options: DataOptions, kind: str) -> DatasetBundle:
    """A ``.csv``/``.parquet`` file or (``kind="hf"``) a ``save_to_disk`` folder as train and test.

    The test set is the saved dataset's ``test`` split where it has one, else a seeded share
    ``data.test_fraction`` of the rows held out, stratified by label.
    """
    if kind == "hf":
        table, test_table = read_saved_dataset(path)
    else:
        table, test_table = read_table(path, kind), None
    features = feature_columns(table, options)
    names = table_labels(table, options.label, path)
    examples = table_examples(table, features, path)
    groups = None
    if options.partition_by:
        groups = _column(table, options.partition_by, path, "partition_by").to_numpy(zero_copy_only=False)
    if test_table is None:
        classes = class_names(names, options)
        labels = encode_labels(names, classes, path)
        train_rows, test_rows = hold_out(labels, options.test_fraction, options.seed, path)
        test_examples, test_labels = examples[test_rows], labels[test_rows]
        examples, labels = examples[train_rows], labels[train_rows]
        groups = None if groups is None else groups[train_rows]
    else:
        source = f"{path} (test split)"
        test_names = table_labels(test_table, options.label, source)
        classes = class_names(names, options)
        labels, test_labels = encode_labels(names, classes, path), encode_labels(test_names, classes, source)
        test_examples = table_examples(test_table, features, source)
        if test_examples.shape[1:] != examples.shape[1:]:
            raise DatasetError(f"{source}: examples have shape {test_examples.shape[1:]} but the train split's "
                               f"have {examples.shape[1:]}")
    scale = Standardiser.fit(examples)
    return DatasetBundle(
        TensorExamples(scale(examples), labels),
        TensorExamples(scale(test_examples), test_labels),
        num_classes=len(classes),
        input_shape=tuple(int(d) for d in examples.shape[1:]),
        name=str(path),
        groups=groups,
        groups_from=f"column {options.partition_by!r} of {path}" if groups is not None else "",
    )
