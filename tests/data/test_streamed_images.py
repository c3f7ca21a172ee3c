"""Image datasets read from disk a batch at a time: in place (uncompressed IDX, CIFAR binary) or
from sets prepared once in the image cache; bit for bit the values of the in-memory arrays."""

from __future__ import annotations

import gzip
import logging
import os
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import endd.data.images.cache as cache_module
import endd.data.images.transforms as transforms_module
import endd.data.shifts as shifts_module
from endd.config import resolve_config
from endd.data import load_data
from endd.data.images import (
    channel_mean_std,
    load_image_dataset,
    open_image_set,
    write_cifar_binary,
    write_fake_dataset,
    write_idx,
)
from endd.data.ondisk import (
    ArrayRows,
    ConcatRows,
    IndexedRows,
    NpyRows,
    RecordRows,
    StandardisedRows,
)
from endd.data.shifts import SHIFTS, make_shift, reference_statistics, shift_chunks
from endd.errors import DataError

_CLASSES = 10


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)


def _write_mnist(root, n_train=300, n_test=120, *, gz=False, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[: n // 2] //= 3  # channel statistics away from 0.5
        labels = (np.arange(n) % _CLASSES).astype(np.uint8)
        write_idx(root / "mnist" / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(root / "mnist" / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        arrays[prefix] = images[:, None]
        arrays[f"{prefix}_labels"] = labels.astype(np.int64)
    return arrays


def _mnist_data(root, cache, *extra: str) -> dict:
    overrides = [
        "data.name=mnist",
        f"data.path={root}",
        f"data.cache={cache}",
        "data.train_size=200",
        "data.test_size=90",
        "data.ood=[gaussian_noise, inverted, cifar10]",
        "data.ood_size=50",
        "data.aux=vflip",
        "data.aux_size=70",
        *extra,
    ]
    return resolve_config({}, overrides)["data"]


def _expected(x: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """What the in-memory bundle computed for a whole split: one float32 copy, scaled, then
    standardised in place (on a copy: float32 input was standardised in place, the raw shift
    sets with it)."""
    t = torch.from_numpy(np.array(x, copy=True)).to(torch.float32)
    if x.dtype == np.uint8:
        t = t.div_(255.0)
    return t.sub_(mean).div_(std)


def test_idx_dataset_is_read_in_place_a_batch_at_a_time(tmp_path):
    arrays = _write_mnist(tmp_path)
    write_fake_dataset("cifar10", tmp_path, num_images=60)
    data = load_data(_mnist_data(tmp_path, tmp_path / "cache"), seed=3)
    splits = data.unlabelled_splits()
    assert set(splits) == {
        "train",
        "test",
        "aux",
        "ood_gaussian_noise",
        "ood_inverted",
        "ood_cifar10",
    }
    assert all(isinstance(x, StandardisedRows) for x in splits.values())
    # the subsets are index lists over the IDX file itself: nothing read, nothing copied
    train_rows = data.x_train.rows
    assert isinstance(train_rows, IndexedRows) and isinstance(train_rows.rows, RecordRows)
    assert train_rows.rows.path == tmp_path / "mnist" / "train-images-idx3-ubyte"
    assert len(data.x_train) == 200 and data.x_train.shape == (200, 1, 28, 28)
    # laid out as the in-memory subset of the [N, 1, H, W] view of the IDX array was
    assert data.x_train.channel_stride == 1 and data.x_train[0:4].stride()[1] == 1

    # every value is the in-memory computation's, bit for bit
    index = train_rows.index
    mean_np, std_np = channel_mean_std(arrays["train"][index])
    mean, std = torch.from_numpy(mean_np).view(-1, 1, 1), torch.from_numpy(std_np).view(-1, 1, 1)
    assert torch.equal(data.mean, mean) and torch.equal(data.std, std)
    expected_train = _expected(arrays["train"][index], mean, std)
    assert torch.equal(_bits(data.x_train[:]), _bits(expected_train))
    batch = torch.tensor([5, 199, 0, 17, 17, 64])
    assert torch.equal(_bits(data.x_train[batch]), _bits(expected_train[batch]))
    assert torch.equal(data.y_train, torch.from_numpy(arrays["train_labels"][index]))
    test_index = data.x_test.rows.index
    assert torch.equal(
        _bits(data.x_test[:]), _bits(_expected(arrays["t10k"][test_index], mean, std))
    )
    # shifts: make_shift on the whole reference split, standardised
    for name, role, reference, n in (
        ("gaussian_noise", "ood", arrays["t10k"], 50),
        ("inverted", "ood", arrays["t10k"], 50),
        ("vflip", "aux", arrays["train"], 70),
    ):
        key = zlib.crc32(f"{role}:{name}".encode())
        seed = 0 if role == "ood" else 3
        state = int(np.random.SeedSequence([seed, key]).generate_state(1)[0])
        whole = make_shift(name, reference, n, state)
        got = data.x_aux if role == "aux" else data.ood[name]
        assert torch.equal(_bits(got[:]), _bits(_expected(whole, mean, std)))
        raw = data.raw_splits()["aux" if role == "aux" else f"ood_{name}"]
        assert torch.equal(raw[:], torch.from_numpy(whole))  # raw: the shift's own [0, 1] values
    cifar_grey = load_image_dataset("cifar10", tmp_path, "test", channels=1, size=28).images
    ood_index = data.ood["cifar10"].rows.index
    assert torch.equal(
        _bits(data.ood["cifar10"][:]), _bits(_expected(cifar_grey[ood_index], mean, std))
    )


def test_cifar_binary_is_read_in_place(tmp_path):
    write_fake_dataset("cifar10", tmp_path, num_images=9)
    opened = open_image_set("cifar10", tmp_path, "train")
    assert isinstance(opened.rows, ConcatRows) and len(opened.rows.parts) == 5
    assert all(isinstance(p, RecordRows) and p.record_bytes == 3073 for p in opened.rows.parts)
    whole = load_image_dataset("cifar10", tmp_path, "train")
    # the in-memory reader, file by file, against the rows read in place
    from endd.data.images import load_cifar10

    reference = load_cifar10(tmp_path, "train")
    np.testing.assert_array_equal(whole.images, reference.images)
    np.testing.assert_array_equal(opened.labels, reference.labels)
    order = np.array([44, 0, 9, 10, 8, 17, 18, 26, 3])
    np.testing.assert_array_equal(opened.rows.take(order), reference.images[order])
    np.testing.assert_array_equal(opened.rows.read(7, 30), reference.images[7:30])


@settings(max_examples=30, deadline=None)
@given(
    indices=st.lists(st.integers(0, 22), max_size=25),
    start=st.integers(0, 30),
    stop=st.integers(0, 30),
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=4),
)
def test_row_sources_read_what_numpy_indexes(tmp_path_factory, indices, start, stop, sizes):
    folder = tmp_path_factory.mktemp("rows")
    rng = np.random.default_rng(len(sizes))
    parts, arrays = [], []
    for number, size in enumerate(sizes):  # records of 3 header bytes + a [2, 3] uint8 row
        records = rng.integers(0, 256, (size, 3 + 6), dtype=np.uint8)
        (folder / f"{number}.bin").write_bytes(b"HDR!" + records.tobytes())
        layout = {"offset": 4, "count": size, "row_shape": (2, 3), "dtype": np.uint8}
        parts.append(RecordRows(folder / f"{number}.bin", record_bytes=9, skip=3, **layout))
        arrays.append(records[:, 3:].reshape(size, 2, 3))
    whole = np.concatenate(arrays)
    rows = ConcatRows(parts)
    index = np.array([i % len(whole) for i in indices], dtype=np.int64)
    np.testing.assert_array_equal(rows.read(start, stop), whole[start:stop])
    np.testing.assert_array_equal(rows.take(index), whole[index])
    subset = IndexedRows(rows, index)
    np.testing.assert_array_equal(subset.read(start, stop), whole[index][start:stop])
    np.testing.assert_array_equal(ArrayRows(whole).take(index), whole[index])
    if len(index):
        inner = np.array([i % len(index) for i in indices])
        np.testing.assert_array_equal(subset.take(inner), whole[index][inner])
    with pytest.raises(IndexError):
        rows.take(np.array([len(whole)]))


def _spread(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Float32 values of many magnitudes: their float64 sum depends on the summation order."""
    values = np.random.default_rng(seed).random(shape, dtype=np.float32) ** 12
    values[::2] *= np.float32(3.3e-4)
    return values.astype(np.float32)


@pytest.mark.parametrize("chunk_values", [1 << 22, 777])
def test_reference_statistics_sum_in_numpys_order(monkeypatch, chunk_values):
    monkeypatch.setattr(shifts_module, "_CHUNK_VALUES", chunk_values)
    naive_differs = False
    shapes = [(3000, 1, 28, 28), (50, 1, 64, 64), (30, 3, 32, 32), (4, 3, 100, 100), (5, 1, 8, 8)]
    for seed, shape in enumerate(shapes):
        reference = _spread(shape, seed)
        mean, std = reference_statistics(ArrayRows(reference))
        assert np.array_equal(mean, reference.mean(axis=(0, 2, 3), dtype=np.float64)), shape
        assert np.array_equal(std, reference.std(axis=(0, 2, 3), dtype=np.float64)), shape
        flat = reference.astype(np.float64).transpose(1, 0, 2, 3).reshape(shape[1], -1)
        naive = np.cumsum(flat, axis=1)[:, -1] / flat.shape[1]
        naive_differs |= not np.array_equal(naive, mean)
    assert naive_differs  # the data tell summation orders apart: the check above can fail
    pixels = np.random.default_rng(9).integers(0, 256, (700, 3, 9, 9), dtype=np.uint8)
    unit = pixels.astype(np.float32) / np.float32(255.0)
    mean, std = reference_statistics(ArrayRows(pixels))
    assert np.array_equal(mean, unit.mean(axis=(0, 2, 3), dtype=np.float64))
    assert np.array_equal(std, unit.std(axis=(0, 2, 3), dtype=np.float64))


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_shifts_made_in_chunks_are_make_shift_bit_for_bit(monkeypatch, name):
    monkeypatch.setattr(shifts_module, "_CHUNK_VALUES", 3 * 28 * 28 * 7 + 5)  # 7-image chunks
    reference = np.random.default_rng(1).integers(0, 256, (40, 3, 28, 28), dtype=np.uint8)
    for n in (1, 30, 57):
        whole = make_shift(name, reference, n, seed=11)
        chunks = list(shift_chunks(name, ArrayRows(reference), n, seed=11))
        assert len(chunks) == -(-n // 7)
        made = np.concatenate(chunks)
        assert made.dtype == np.float32 and np.array_equal(
            made.view(np.uint32), whole.view(np.uint32)
        )


def _all_values(data) -> dict[str, torch.Tensor]:
    return {split: x[:] for split, x in data.unlabelled_splits().items()}


def test_gzip_sets_are_prepared_once_and_rebuilt_when_stale_or_damaged(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(cache_module, "IN_MEMORY_BYTES", 0)  # every set to the disk cache
    _write_mnist(tmp_path, gz=True)
    write_fake_dataset("cifar10", tmp_path, num_images=12)
    config = _mnist_data(tmp_path, tmp_path / "cache")
    first = load_data(config, seed=0)
    assert isinstance(first.x_train.rows.rows, NpyRows)  # decompressed into the cache
    folder = tmp_path / "cache" / "images"
    entries = sorted(p.name for p in folder.glob("*.json"))
    # train and test decompressed, cifar10's test split (read in place) converted to grey
    # 28×28, two OOD shifts, the aux shift
    assert len(entries) == 6
    assert len(list(folder.glob("*.npy"))) == 6
    expected = _all_values(first)
    monkeypatch.setattr(cache_module, "IN_MEMORY_BYTES", 64 << 20)  # small sets: in memory
    memory_values = _all_values(load_data(config, seed=0))
    monkeypatch.setattr(cache_module, "IN_MEMORY_BYTES", 0)
    for split, x in expected.items():
        assert torch.equal(_bits(memory_values[split]), _bits(x)), split

    stamps = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = load_data(config, seed=0)  # reused: nothing written
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    assert all(torch.equal(x, expected[s]) for s, x in _all_values(again).items())

    # a damaged part (same size, one byte changed) is rebuilt, with a warning
    train_file = next(folder.glob("mnist-train-*.images.npy"))
    data = bytearray(train_file.read_bytes())
    data[-1] ^= 0xFF
    train_file.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="endd"):
        rebuilt = load_data(config, seed=0)
    assert "contents differ" in caplog.text and train_file.name in caplog.text
    assert all(torch.equal(x, expected[s]) for s, x in _all_values(rebuilt).items())
    # a truncated part and a garbled sidecar too
    test_file = next(folder.glob("mnist-test-*.images.npy"))
    test_file.write_bytes(test_file.read_bytes()[:100])
    next(folder.glob("ood-inverted-*.json")).write_text("{not json")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="endd"):
        rebuilt = load_data(config, seed=0)
    assert caplog.text.count("rebuilding") == 2
    assert all(torch.equal(x, expected[s]) for s, x in _all_values(rebuilt).items())

    # a source file that changed is read again (its stamp differs), in place of the old entry
    changed = _write_mnist(tmp_path, gz=True, seed=1)
    os.utime(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", ns=(1, 1))
    fresh = load_data(config, seed=0)
    index = fresh.x_train.rows.index
    raw = fresh.raw_splits()["train"][:]
    assert torch.equal(raw, torch.from_numpy(changed["train"][index]).float().div_(255.0))
    assert sorted(p.name for p in folder.glob("*.json")) == entries


def test_damaged_gzip_and_unwritable_cache_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "IN_MEMORY_BYTES", 0)
    _write_mnist(tmp_path, gz=True)
    write_fake_dataset("cifar10", tmp_path, num_images=12)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match=r"cannot write the image cache .*a_file.*data\.cache"):
        load_data(_mnist_data(tmp_path, blocker), seed=0)
    image_file = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    content = gzip.decompress(image_file.read_bytes())
    image_file.write_bytes(gzip.compress(content[:-50]))  # a short but valid gzip stream
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz holds \d+ data bytes"):
        load_data(_mnist_data(tmp_path, tmp_path / "cache"), seed=0)
    image_file.write_bytes(gzip.compress(content)[:-30])  # a truncated gzip stream
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz is a damaged gzip"):
        load_data(_mnist_data(tmp_path, tmp_path / "cache"), seed=0)
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # nothing half-written left behind


def test_cache_folder_defaults_to_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_module.default_cache_folder() == tmp_path / "xdg" / "endd"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_module.default_cache_folder() == tmp_path / "home" / ".cache" / "endd"
    config = resolve_config({}, ["data.name=digits", "data.aux=null", "data.cache=~/sets"])
    assert config["data"]["cache"] == "~/sets"


def test_cifar_training_set_written_in_place_matches_in_memory_reader(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, (30, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(30) % 10
    write_cifar_binary(tmp_path / "cifar-100-binary" / "train.bin", images, labels // 5, labels)
    write_cifar_binary(
        tmp_path / "cifar-100-binary" / "test.bin", images[:12], labels[:12] // 5, labels[:12]
    )
    config = resolve_config(
        {}, ["data.name=cifar100", f"data.path={tmp_path}", "data.ood=[]", "data.aux=null"]
    )
    data = load_data(config["data"], 0)
    assert isinstance(data.x_train.rows, RecordRows)  # no subset: the file itself
    mean_np, std_np = channel_mean_std(images)
    mean, std = torch.from_numpy(mean_np).view(-1, 1, 1), torch.from_numpy(std_np).view(-1, 1, 1)
    assert torch.equal(_bits(data.x_train[:]), _bits(_expected(images, mean, std)))
    assert torch.equal(data.y_train, torch.from_numpy(labels))
    assert torch.equal(data.raw_splits()["test"][3:7], torch.from_numpy(images[3:7]).float() / 255)


@pytest.mark.parametrize("stride", [0, 1])
def test_single_channel_batches_keep_the_layout_of_a_whole_split(stride):
    # The layout decides PyTorch's convolution kernel (channels-last for a channel stride of 1)
    # and so the last bits of the logits: batches must be laid out as indexing the whole split
    # as one in-memory tensor laid out that way lays them out.
    values = torch.rand(10, 1, 6, 5)
    whole = values.as_strided(values.shape, (30, stride, 5, 1))
    rows = StandardisedRows(ArrayRows(values.numpy()), None, None, channel_stride=stride)
    index = torch.tensor([4, 1, 7])
    for got, expected in (
        (rows[index], whole[index]),
        (rows[2:6], whole[2:6]),
        (rows[3], whole[3]),
        (rows.raw()[2:6], whole[2:6]),
    ):
        assert got.stride() == expected.stride() and torch.equal(got, expected)
    plain = StandardisedRows(ArrayRows(values.numpy()), None, None)
    assert plain[index].stride() == values[index].stride() == (30, 30, 5, 1)
    conv = torch.nn.Conv2d(1, 4, 3)
    assert torch.equal(conv(rows[index]), conv(whole[index]))


def _whole_chunk_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """channel_mean_std as it was: each 4 096-image chunk converted to float64 whole."""
    scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
    total, total_sq = np.zeros(images.shape[1]), np.zeros(images.shape[1])
    for start in range(0, len(images), 4096):
        chunk = np.asarray(images[start : start + 4096], dtype=np.float64) * scale
        total += chunk.sum(axis=(0, 2, 3))
        total_sq += np.square(chunk).sum(axis=(0, 2, 3))
    return total, total_sq


@pytest.mark.parametrize("leaf", [1 << 20, 1000])
def test_channel_statistics_from_small_pieces_are_the_whole_chunks(monkeypatch, leaf):
    monkeypatch.setattr(transforms_module, "LEAF_VALUES", leaf)
    rng = np.random.default_rng(4)
    cases = [
        rng.integers(0, 256, (4500, 1, 20, 20), dtype=np.uint8),
        _spread((4200, 1, 12, 12), 5),
        _spread((300, 3, 32, 32), 6),
        rng.integers(0, 256, (50, 3, 40, 40), dtype=np.uint8),
    ]
    for images in cases:
        total, squares = _whole_chunk_statistics(images)
        got_total, got_squares = np.zeros_like(total), np.zeros_like(total)
        scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
        plane = images.shape[2] * images.shape[3]
        for start in range(0, len(images), 4096):
            stop = min(len(images), start + 4096)
            sums = transforms_module._chunk_sums(
                ArrayRows(images).read, start, stop, scale, images.shape[1], plane
            )
            got_total += sums[0]
            got_squares += sums[1]
        assert np.array_equal(got_total, total) and np.array_equal(got_squares, squares)
        count = images.shape[0] * plane
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
        got_mean, got_std = channel_mean_std(ArrayRows(images))
        assert np.array_equal(got_mean, mean.astype(np.float32))
        assert np.array_equal(got_std, std.astype(np.float32))
    # the data tell summation orders apart: a naive running sum differs from numpy's
    flat = cases[1].astype(np.float64).reshape(-1)[: 4096 * 144]
    assert np.cumsum(flat)[-1] != flat.sum()
