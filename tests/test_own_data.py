"""Bringing your own data: tables (csv:, parquet:, hf:), one folder per client (clients:),
natural partitions, examples of any shape, and one clear error per malformed input.

Every dataset here is written by the test itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet
import pytest
import torch
from PIL import Image

from fedcomp.run.config import resolve
from fedcomp.data import labels_of, load_dataset
from fedcomp.data.tables import hold_out
from fedcomp.errors import ConfigError, DatasetError, ModelError
from fedcomp.run.experiment import check_run, client_indices, client_loader, run_dataset, run_model
from fedcomp.models import build_model

# --- tables -------------------------------------------------------------------------------


def sensor_rows(rows: int = 60, seed: int = 0) -> dict[str, list]:
    """Three numeric features, a string label that depends on them, and a writer id."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(5, 2, rows), rng.normal(-3, 0.5, rows)
    return {"a": a.tolist(), "b": b.tolist(), "c": rng.integers(0, 10, rows).tolist(),
            "writer": [f"w{i % 3}" for i in range(rows)],
            "label": ["high" if x > 5 else "low" for x in a]}


def write_csv(path: Path, columns: dict[str, list]) -> Path:
    names = list(columns)
    lines = [",".join(names)] + [",".join("" if v is None else str(v) for v in row) for row in
                                 zip(*columns.values())]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_table(tmp_path: Path) -> None:
    columns = sensor_rows()
    bundle = load_dataset(f"csv:{write_csv(tmp_path / 'sensors.csv', columns)}", features=("a", "b", "c"))
    assert (bundle.num_classes, bundle.input_shape) == (2, (3,))
    assert (len(bundle.train), len(bundle.test)) == (48, 12)  # data.test_fraction 0.2 held out
    example, label = bundle.train[0]
    assert example.dtype == torch.float32 and example.shape == (3,) and label in (0, 1)
    # classes in sorted order: "high" is 0, "low" is 1
    raw = np.column_stack([columns["a"], columns["b"], columns["c"]]).astype(np.float32)
    names = np.asarray(columns["label"])
    labels = (names == "low").astype(np.int64)
    train_rows, test_rows = hold_out(labels, 0.2, 0, "x")
    assert labels_of(bundle.test).tolist() == labels[test_rows].tolist()
    # standardised with the statistics of the training rows only
    mean, std = raw[train_rows].mean(0), raw[train_rows].std(0)
    expected_test = (raw[test_rows] - mean) / std
    assert torch.allclose(bundle.test.examples, torch.from_numpy(expected_test), atol=1e-5)
    assert torch.allclose(bundle.train.examples.mean(0), torch.zeros(3), atol=1e-5)


def test_csv_uses_every_other_column_and_refuses_a_categorical_one(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "sensors.csv", sensor_rows())
    with pytest.raises(DatasetError, match=f"feature column 'writer' in {path} is categorical"):
        load_dataset(f"csv:{path}")
    bundle = load_dataset(f"csv:{path}", partition_by="writer")  # the partition column is no feature
    assert bundle.input_shape == (3,)


def test_missing_values_are_refused_naming_the_column(tmp_path: Path) -> None:
    columns = sensor_rows()
    columns["b"][7] = None
    path = write_csv(tmp_path / "gaps.csv", columns)
    with pytest.raises(DatasetError, match=f"column 'b' in {path} has 1 missing values \\(the first in row 7\\)"):
        load_dataset(f"csv:{path}", features=("a", "b"))
    columns = sensor_rows()
    columns["label"][3] = None
    path = write_csv(tmp_path / "unlabelled.csv", columns)
    with pytest.raises(DatasetError, match="label column 'label' .* 1 missing values"):
        load_dataset(f"csv:{path}", features=("a",))


def test_parquet_table_with_integer_labels(tmp_path: Path) -> None:
    columns = sensor_rows()
    columns["y"] = [int(x > 5) * 2 + 1 for x in columns["a"]]  # ids 1 and 3: two classes, labels 0 and 1
    del columns["label"]
    path = tmp_path / "rows.parquet"
    pyarrow.parquet.write_table(pa.table(columns), path)
    bundle = load_dataset(f"parquet:{path}", label="y", features=("a", "b"))
    assert (bundle.num_classes, bundle.input_shape) == (2, (2,))
    assert set(labels_of(bundle.train).tolist()) == {0, 1}
    with pytest.raises(DatasetError, match=f"{path} has no label column 'label'"):
        load_dataset(f"parquet:{path}", features=("a",))
    with pytest.raises(DatasetError, match="labels outside the classes \\(1\\): '3'"):
        load_dataset(f"parquet:{path}", label="y", features=("a",), classes=("1",))


def test_hf_saved_dataset_keeps_the_example_shape_and_its_test_split(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    rng = np.random.default_rng(1)
    train = {"sequence": rng.normal(size=(40, 5, 3)).tolist(), "label": [i % 4 for i in range(40)]}
    test = {"sequence": rng.normal(size=(8, 5, 3)).tolist(), "label": [i % 4 for i in range(8)]}
    DatasetDict({"train": Dataset.from_dict(train), "test": Dataset.from_dict(test)}).save_to_disk(tmp_path / "seq")
    bundle = load_dataset(f"hf:{tmp_path / 'seq'}", features=("sequence",))
    assert (bundle.num_classes, bundle.input_shape, len(bundle.train), len(bundle.test)) == (4, (5, 3), 40, 8)
    raw_train, raw_test = np.asarray(train["sequence"], np.float32), np.asarray(test["sequence"], np.float32)
    expected = (raw_test - raw_train.mean(0)) / raw_train.std(0)
    assert torch.allclose(bundle.test.examples, torch.from_numpy(expected), atol=1e-4)
    model = build_model("mlp", bundle.num_classes, bundle.input_shape)
    assert model(bundle.train.examples[:3]).shape == (3, 4)
    with pytest.raises(ModelError, match="model 'cnn' needs images of shape \\(C, H, W\\).*\\(5, 3\\)"):
        build_model("cnn", bundle.num_classes, bundle.input_shape)


def test_hf_single_dataset_is_split(tmp_path: Path) -> None:
    from datasets import Dataset

    Dataset.from_dict(sensor_rows()).save_to_disk(tmp_path / "flat")
    bundle = load_dataset(f"hf:{tmp_path / 'flat'}", features=("a", "b"))
    assert (len(bundle.train), len(bundle.test), bundle.input_shape) == (48, 12, (2,))
    with pytest.raises(DatasetError, match="cannot load the Hugging Face dataset"):
        load_dataset(f"hf:{tmp_path / 'nothing'}")


@pytest.mark.parametrize("model", ["cnn", "resnet18", "mobilenet_v2", "vgg11_bn", "resnet20"])
def test_image_models_refuse_rows_and_mlp_flattens_any_shape(model: str) -> None:
    with pytest.raises(ModelError, match=f"model '{model}' needs images of shape \\(C, H, W\\).*\\(30,\\)"):
        build_model(model, 3, (30,))
    for shape in [(30,), (7, 4), (1, 8, 8), (2, 3, 4, 5)]:
        assert build_model("mlp", 3, shape)(torch.zeros(2, *shape)).shape == (2, 3)


# --- natural partitions -------------------------------------------------------------------


def config_for(dataset: str, **settings) -> dict:
    return resolve({"dataset": dataset, "model": "mlp", **settings})


def test_natural_partition_by_a_column(tmp_path: Path) -> None:
    columns = sensor_rows(90)
    columns["writer_code"] = [float(w[1]) for w in columns["writer"]]  # a feature copy of the writer
    path = write_csv(tmp_path / "handwriting.csv", columns)
    config = config_for(f"csv:{path}", partition="natural", num_clients=3, **{"data.partition_by": "writer"})
    check_run(config)
    train = run_dataset(config).train
    sizes = []
    for client in range(3):
        indices = client_indices(config, client)
        codes = train.examples[indices, 3]
        assert torch.all(codes == codes[0])  # one writer per client
        sizes.append(len(indices))
    assert sum(sizes) == len(train)
    assert len({float(train.examples[client_indices(config, c)[0], 3]) for c in range(3)}) == 3
    with pytest.raises(ConfigError, match=f"column 'writer' of {path} gives 3 clients but num_clients=4"):
        check_run({**config, "num_clients": 4})
    with pytest.raises(ConfigError, match="partition=natural needs"):
        check_run({**config, "data.partition_by": "", "data.features": "a,b"})


# --- clients:PATH, image folders -----------------------------------------------------------

# client folder -> class -> number of images; pixel value = 20 * client + 5 * class index
CLIENT_IMAGES = {"site_a": {"cat": 3, "dog": 2}, "site_b": {"dog": 4}, "site_c": {"bird": 2, "cat": 1, "dog": 1}}
CLASSES = ("bird", "cat", "dog")


def write_client_images(root: Path, with_test: bool = True, size: tuple[int, int] = (6, 6)) -> Path:
    for client, (folder, counts) in enumerate(CLIENT_IMAGES.items()):
        for name, count in counts.items():
            (root / folder / name).mkdir(parents=True)
            for i in range(count):
                Image.new("L", size, 20 * client + 5 * CLASSES.index(name)).save(root / folder / name / f"{i}.png")
    if with_test:
        for name in CLASSES:
            (root / "test" / name).mkdir(parents=True)
            Image.new("L", size, 200).save(root / "test" / name / "0.png")
    return root


def test_clients_image_folders_each_client_trains_on_exactly_its_folder(tmp_path: Path) -> None:
    root = write_client_images(tmp_path / "clients")
    config = config_for(f"clients:{root}", model="cnn", num_clients=3)
    check_run(config)
    bundle = run_dataset(config)
    assert (bundle.num_classes, bundle.input_shape, len(bundle.test)) == (3, (1, 6, 6), 3)
    for client, (folder, counts) in enumerate(CLIENT_IMAGES.items()):
        loader = client_loader(config, client, server_round=1)
        paths = {bundle.train.samples[i][0] for i in loader.dataset.indices}
        assert paths == {str(p) for p in (root / folder).rglob("*.png")}
        seen = 0
        for images, labels in loader:
            for image, label in zip(images, labels):
                # the pixel says which client and which class the image was written for
                expected = (20 * client + 5 * int(label)) / 255
                assert torch.allclose(image, torch.full_like(image, (expected - 0.5) / 0.5), atol=1e-2)
                assert CLASSES[int(label)] in counts  # the same class name has the same label everywhere
                seen += 1
        assert seen == sum(counts.values())


def test_clients_without_test_folder_hold_out_a_share_of_each_client(tmp_path: Path) -> None:
    root = write_client_images(tmp_path / "clients", with_test=False)
    config = config_for(f"clients:{root}", num_clients=3, **{"data.test_fraction": 0.25})
    bundle = run_dataset(config)
    for client, (folder, counts) in enumerate(CLIENT_IMAGES.items()):
        total = sum(counts.values())
        paths = {bundle.train.samples[i][0] for i in client_indices(config, client)}
        assert len(paths) == total - int(np.ceil(total * 0.25))
        assert all(p.startswith(str(root / folder) + "/") for p in paths)
    assert len(bundle.train) + len(bundle.test) == sum(sum(c.values()) for c in CLIENT_IMAGES.values())
    assert not {p for p, _ in bundle.train.samples} & {p for p, _ in bundle.test.samples}


def test_clients_must_match_num_clients_and_partition(tmp_path: Path) -> None:
    root = write_client_images(tmp_path / "clients")
    with pytest.raises(ConfigError, match=f"the 3 client folders of {root} .* gives 3 clients but num_clients=4"):
        check_run(config_for(f"clients:{root}", num_clients=4))
    with pytest.raises(ConfigError, match="partition=dirichlet does not apply"):
        check_run(config_for(f"clients:{root}", num_clients=3, partition="dirichlet"))


def test_a_node_reads_its_own_data_path(tmp_path: Path) -> None:
    root = write_client_images(tmp_path / "clients")
    config = config_for(f"clients:{tmp_path / 'elsewhere'}", model="cnn", num_clients=3)
    node = {"partition-id": 1, "data-path": str(root / "site_b")}
    with pytest.raises(DatasetError, match="set data.classes="):
        client_indices(config, 1, node)
    config = {**config, "data.classes": "bird,cat,dog"}
    loader = client_loader(config, 1, 1, node)
    assert sorted(loader.dataset.dataset.samples) == sorted((str(p), 2) for p in (root / "site_b").rglob("*.png"))
    assert run_model(config, node)(next(iter(loader))[0]).shape[1] == 3
    with pytest.raises(ConfigError, match="needs dataset=clients:PATH"):
        client_indices({**config, "dataset": "digits"}, 1, node)


def test_clients_image_errors(tmp_path: Path) -> None:
    def fresh(name: str) -> Path:
        return write_client_images(tmp_path / name)

    root = fresh("empty")
    (root / "site_d").mkdir()
    with pytest.raises(DatasetError, match=f"client folder {root / 'site_d'} is empty"):
        load_dataset(f"clients:{root}")

    root = fresh("unreadable")
    (root / "site_b" / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=f"cannot read image {root / 'site_b' / 'dog' / 'broken.png'}"):
        load_dataset(f"clients:{root}")

    root = fresh("sizes")
    Image.new("L", (9, 7), 0).save(root / "site_c" / "cat" / "big.png")
    with pytest.raises(DatasetError, match="images of different sizes in .*site_c.* is 9x7"):
        load_dataset(f"clients:{root}")
    root = fresh("sizes_across")
    shutil.rmtree(root / "site_c")
    (root / "site_c" / "cat").mkdir(parents=True)
    Image.new("L", (8, 8), 0).save(root / "site_c" / "cat" / "0.png")
    with pytest.raises(DatasetError, match="site_c has 8x8 images but .*site_a has 6x6 images"):
        load_dataset(f"clients:{root}")

    root = fresh("outside")
    with pytest.raises(DatasetError, match="site_a has labels outside the classes \\(bird, dog\\): 'cat'"):
        load_dataset(f"clients:{root}", classes=("bird", "dog"))
    (root / "test" / "fish").mkdir()
    Image.new("L", (6, 6), 0).save(root / "test" / "fish" / "0.png")
    with pytest.raises(DatasetError, match="test has labels outside the classes \\(bird, cat, dog\\): 'fish'"):
        load_dataset(f"clients:{root}")

    root = fresh("no_examples")
    shutil.rmtree(root / "site_b" / "dog")
    (root / "site_b" / "dog").mkdir()
    with pytest.raises(DatasetError, match="site_b has class subfolders \\(dog\\) but no images"):
        load_dataset(f"clients:{root}")

    with pytest.raises(DatasetError, match="no such folder"):
        load_dataset(f"clients:{tmp_path / 'absent'}")


# --- clients:PATH, one table per client ----------------------------------------------------


def write_client_tables(root: Path, rows: tuple[int, ...] = (12, 20, 8), with_test: bool = True) -> Path:
    """Client k's table: feature `site` = k, `row` = a number unique over all clients, label from `a`."""
    start = 0
    for client, count in enumerate(rows):
        columns = sensor_rows(count, seed=client)
        columns = {"site": [float(client)] * count, "row": list(range(start, start + count)),
                   "a": columns["a"], "label": columns["label"]}
        start += count
        (root / f"client_{client}").mkdir(parents=True)
        write_csv(root / f"client_{client}" / "data.csv", columns)
    if with_test:
        (root / "test").mkdir()
        test = sensor_rows(10, seed=9)
        write_csv(root / "test" / "data.csv", {"site": [9.0] * 10, "row": list(range(1000, 1010)), "a": test["a"],
                                               "label": test["label"]})
    return root


def test_clients_tables_each_client_trains_on_exactly_its_rows(tmp_path: Path) -> None:
    root = write_client_tables(tmp_path / "clients")
    config = config_for(f"clients:{root}", num_clients=3)
    check_run(config)
    bundle = run_dataset(config)
    assert (bundle.input_shape, bundle.num_classes, len(bundle.test)) == ((3,), 2, 10)
    raw = bundle.train.examples.numpy()
    # undo the standardisation with the pooled training statistics of the clients' rows
    pooled = np.concatenate([np.loadtxt(root / f"client_{k}" / "data.csv", delimiter=",", skiprows=1,
                                        usecols=(0, 1, 2)) for k in range(3)])
    rows = np.rint(raw[:, 1] * pooled[:, 1].std() + pooled[:, 1].mean()).astype(int)
    start = 0
    for client, count in enumerate((12, 20, 8)):
        indices = client_indices(config, client)
        assert sorted(rows[indices].tolist()) == list(range(start, start + count))
        start += count


def test_clients_table_errors(tmp_path: Path) -> None:
    root = write_client_tables(tmp_path / "missing_label")
    text = (root / "client_1" / "data.csv").read_text().replace(",label\n", ",kind\n", 1)
    (root / "client_1" / "data.csv").write_text(text)
    with pytest.raises(DatasetError, match=f"{root / 'client_1' / 'data.csv'} has no label column 'label'"):
        load_dataset(f"clients:{root}")

    root = write_client_tables(tmp_path / "no_rows")
    (root / "client_2" / "data.csv").write_text("site,row,a,label\n")
    with pytest.raises(DatasetError, match="client_2/data.csv has no rows"):
        load_dataset(f"clients:{root}")

    root = write_client_tables(tmp_path / "two_files")
    shutil.copy(root / "client_0" / "data.csv", root / "client_0" / "more.csv")
    with pytest.raises(DatasetError, match="client_0 holds 2 table files"):
        load_dataset(f"clients:{root}")

    root = write_client_tables(tmp_path / "mixed")
    write_client_images(tmp_path / "images")
    shutil.copytree(tmp_path / "images" / "site_a", root / "client_3")
    with pytest.raises(DatasetError, match="mix images and tables"):
        load_dataset(f"clients:{root}")


@pytest.mark.slow
def test_simulation_on_per_client_tables(tmp_path: Path) -> None:
    """The whole path through Flower and Ray: three clients, each with its own csv file."""
    from fedcomp.launch.simulation import run_simulation

    root = write_client_tables(tmp_path / "clients", rows=(40, 60, 30))
    config = config_for(f"clients:{root}", num_clients=3, rounds=2, **{"data.features": "a", "eval.federated": True})
    summary = run_simulation(config, tmp_path / "run")
    assert summary["num_clients"] == 3 and summary["rounds"] == 2
    assert summary["final_accuracy"] >= 0.8  # the label is a threshold on `a`
    rows = [line for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines() if line]
    assert len(rows) == 2
