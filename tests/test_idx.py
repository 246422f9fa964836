"""Tests for ddim.data.idx: the MNIST IDX format and folders of IDX files."""

import gzip

import numpy as np
import pytest
import torch
from test_data import idx_bytes, write_mnist

from ddim.data import TensorImageDataset, denormalize, load_dataset, read_idx
from ddim.errors import BadFile


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_raw_and_gzipped(tmp_path, gz):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.gz" if gz else "x")
    path.write_bytes(gzip.compress(idx_bytes(array)) if gz else idx_bytes(array))
    out = read_idx(path, 3)
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8 and np.array_equal(out, array)


def test_read_idx_rejects_wrong_magic_truncation_and_bad_gzip(tmp_path):
    labels = tmp_path / "labels"
    labels.write_bytes(idx_bytes(np.arange(5)))
    with pytest.raises(ValueError, match="expected 00000803"):
        read_idx(labels, 3)
    cut = tmp_path / "cut"
    cut.write_bytes(idx_bytes(np.zeros((2, 3, 3)))[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(cut, 3)
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(BadFile, match=r"bad\.gz"):
        read_idx(bad, 1)
    damaged = bytearray(gzip.compress(idx_bytes(np.arange(200) % 256)))
    damaged[20:30] = b"\xff" * 10  # the deflate stream itself is damaged
    bad.write_bytes(bytes(damaged))
    with pytest.raises(BadFile, match=r"bad\.gz .*download it again"):
        read_idx(bad, 1)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_splits_labels_and_resize(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    train = load_dataset(tmp_path)
    assert isinstance(train, TensorImageDataset) and train.images.shape == (5, 1, 4, 4)
    assert torch.equal(denormalize(train.images[:, 0]), torch.from_numpy(arrays["train"][0]))
    assert train.labels.tolist() == [0, 1, 2, 0, 1] and train.num_classes == 3
    test = load_dataset(tmp_path, split="test", size=8, channels=3)
    assert test.images.shape == (3, 3, 8, 8) and test[2][1] == 2
    grey = load_dataset(tmp_path, split="test", size=8).images
    assert torch.equal(test.images, grey.expand(-1, 3, -1, -1))


def test_idx_folder_missing_labels_names_the_file(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_dataset(tmp_path, split="test")


def test_idx_folder_count_mismatch(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(4)))
    with pytest.raises(ValueError, match="5 images and .* 4 labels"):
        load_dataset(tmp_path)
