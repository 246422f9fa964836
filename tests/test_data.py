"""Tests for ddim.data: normalisation, every dataset kind, and the errors users will meet."""

import dataclasses
import gzip
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from ddim.data import (
    DATASET_NAMES,
    DataConfig,
    ImageFolder,
    TensorImageDataset,
    build_dataset,
    denormalize,
    load_dataset,
    load_images,
    normalize,
    random_flip,
    to_uint8,
)
from ddim.errors import BadFile, BadValue, MissingFile


def save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode).save(path)
    return path


def idx_bytes(array: np.ndarray) -> bytes:
    header = (0x800 | array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder, n_train=5, n_test=3, gz=False, side=4):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[prefix] = (rng.integers(0, 256, (n, side, side)), np.arange(n) % 3)
        for kind, array in zip(("images-idx3", "labels-idx1"), arrays[prefix], strict=True):
            name = f"{prefix}-{kind}-ubyte" + (".gz" if gz else "")
            data = idx_bytes(array)
            (folder / name).write_bytes(gzip.compress(data) if gz else data)
    return arrays


# --- normalisation -------------------------------------------------------------------------


def test_normalize_maps_uint8_endpoints_exactly_and_unit_floats_too():
    u8 = torch.tensor([0, 255, 51], dtype=torch.uint8)
    assert normalize(u8).tolist() == [-1.0, 1.0, pytest.approx(51 / 127.5 - 1)]
    assert normalize(np.array([0.0, 0.5, 1.0])).tolist() == [-1.0, 0.0, 1.0]
    assert normalize(u8).dtype == torch.float32


def test_denormalize_inverts_normalize_for_every_byte():
    u8 = torch.arange(256, dtype=torch.uint8).reshape(4, 1, 8, 8)
    assert torch.equal(denormalize(normalize(u8)), u8)


def test_to_uint8_is_channels_last_numpy_and_clips():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]).reshape(1, 1, 1, 5).repeat(2, 3, 1, 1)
    out = to_uint8(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (2, 1, 5, 3)
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]
    assert to_uint8(x[0]).shape == (1, 5, 3)


def test_random_flip_flips_each_image_or_leaves_it():
    x = torch.arange(64 * 3.0).reshape(64, 1, 1, 3)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert torch.all(flipped ^ kept) and 10 < flipped.sum() < 54
    assert torch.equal(out, random_flip(x, torch.Generator().manual_seed(0)))


# --- image folders -------------------------------------------------------------------------


def test_image_folder_shapes_range_and_recursion(tmp_path):
    save(tmp_path / "a.png", np.zeros((6, 6, 3)))
    save(tmp_path / "deep" / "er" / "b.jpg", np.full((6, 6, 3), 255))
    save(tmp_path / "c.webp", np.full((6, 6, 3), 255), "RGB")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_dataset(tmp_path)
    assert isinstance(ds, ImageFolder) and len(ds) == 3 and ds.num_classes is None
    image, label = ds[0]
    assert image.shape == (3, 6, 6) and image.dtype == torch.float32 and label == -1
    assert torch.all(image == -1.0) and torch.all(ds[2][0] == 1.0)


def test_grey_folder_keeps_one_channel_and_converts_to_three(tmp_path):
    save(tmp_path / "g.png", np.full((4, 5), 255), "L")
    assert ImageFolder(tmp_path).channels == 1
    image, _ = ImageFolder(tmp_path, channels=3)[0]
    assert image.shape == (3, 4, 5) and torch.all(image == 1.0)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    grey16 = np.array([[0, 128 * 257, 255 * 256, 65535]], dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "d.png")
    image, _ = ImageFolder(tmp_path)[0]
    assert image.shape == (1, 1, 4) and denormalize(image).flatten().tolist() == [0, 128, 254, 255]


def test_rgb_to_grey_uses_pil_luma(tmp_path):
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    rgb[..., 1] = 100
    save(tmp_path / "c.png", rgb)
    expected = np.array(Image.fromarray(rgb).convert("L"))
    image, _ = ImageFolder(tmp_path, channels=1)[0]
    assert image.shape == (1, 2, 2)
    assert torch.equal(denormalize(image)[0], torch.from_numpy(expected))


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0] = (255, 0, 0, 255)  # opaque red
    rgba[1] = (255, 0, 0, 0)  # fully transparent
    save(tmp_path / "t.png", rgba, "RGBA")
    image, _ = ImageFolder(tmp_path)[0]
    assert image.shape == (3, 2, 2)
    assert image[:, 0].T.tolist() == [[1.0, -1.0, -1.0]] * 2
    assert torch.all(image[:, 1] == 1.0)
    assert ImageFolder(tmp_path, channels=1)[0][0].shape == (1, 2, 2)


def test_palette_transparency_is_composited_on_white(tmp_path):
    palette = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), "P")
    palette.putpalette([0, 0, 0, 0, 0, 255])  # index 0 black (transparent), 1 blue
    palette.save(tmp_path / "p.png", transparency=0)
    image, _ = ImageFolder(tmp_path)[0]
    assert image[:, 0, 0].tolist() == [1.0, 1.0, 1.0] and image[:, 0, 1].tolist() == [-1, -1, 1]


def test_resize_covers_then_centre_crops_to_non_square(tmp_path):
    stripes = np.zeros((20, 60, 3), dtype=np.uint8)  # red | green | blue thirds
    stripes[:, :20, 0] = stripes[:, 20:40, 1] = stripes[:, 40:, 2] = 255
    save(tmp_path / "s.png", stripes)
    square, _ = ImageFolder(tmp_path, size=10)[0]  # 30 x 10 after scaling, middle 10 kept
    assert square.shape == (3, 10, 10)
    assert torch.allclose(square[:, :, 2:8].mean((1, 2)), torch.tensor([-1.0, 1.0, -1.0]))
    tall, _ = ImageFolder(tmp_path, size=(16, 8))[0]
    assert tall.shape == (3, 16, 8) and tall.min() >= -1 and tall.max() <= 1


def test_flip_yields_both_orientations(tmp_path):
    half = np.zeros((2, 4), dtype=np.uint8)
    half[:, 2:] = 255
    save(tmp_path / "h.png", half, "L")
    original = ImageFolder(tmp_path)[0][0]
    ds = ImageFolder(tmp_path, flip=True)
    torch.manual_seed(0)
    seen = {tuple(ds[0][0][0, 0].tolist()) for _ in range(40)}
    assert seen == {tuple(original[0, 0].tolist()), tuple(original[0, 0].flip(-1).tolist())}


def test_class_subfolders_become_labels(tmp_path):
    save(tmp_path / "dog" / "x" / "1.png", np.zeros((3, 3)))
    save(tmp_path / "cat" / "1.png", np.zeros((3, 3)))
    save(tmp_path / "dog" / "2.png", np.zeros((3, 3)))
    save(tmp_path / ".hidden" / "3.png", np.zeros((3, 3)))
    ds = load_dataset(tmp_path)
    assert ds.classes == ["cat", "dog"] and ds.num_classes == 2 and len(ds) == 3
    assert sorted(ds[i][1] for i in range(3)) == [0, 1, 1]
    assert [ds[i][1] for i in range(3)] == [0 if "cat" in str(f) else 1 for f in ds.files]
    batch, labels = next(iter(DataLoader(ds, batch_size=3)))
    assert batch.shape == (3, 1, 3, 3) and labels.dtype == torch.int64


def test_images_beside_subfolders_mean_no_labels(tmp_path):
    save(tmp_path / "a" / "1.png", np.zeros((3, 3)))
    save(tmp_path / "b" / "1.png", np.zeros((3, 3)))
    save(tmp_path / "top.png", np.zeros((3, 3)))
    ds = ImageFolder(tmp_path)
    assert ds.num_classes is None and {ds[i][1] for i in range(3)} == {-1}


def test_empty_folder_error_lists_supported_types(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(FileNotFoundError, match="no images found in .*png, jpg, jpeg, webp"):
        load_dataset(tmp_path)


def test_corrupt_image_is_named_when_the_folder_is_scanned(tmp_path):
    save(tmp_path / "good.png", np.zeros((3, 3)))
    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    with pytest.raises(BadFile, match=r"bad\.png"):
        ImageFolder(tmp_path)
    with pytest.raises(BadFile, match=r"^cannot read image .*bad\.png .*replace the file$"):
        load_images(tmp_path / "bad.png")


def test_truncated_image_is_named_when_read(tmp_path):
    path = save(tmp_path / "cut.png", np.random.default_rng(0).integers(0, 256, (64, 64)))
    path.write_bytes(path.read_bytes()[:200])
    ds = ImageFolder(tmp_path)  # the header still reads
    with pytest.raises(BadFile, match=r"cut\.png"):
        ds[0]
    with pytest.raises(BadFile, match=r"cut\.png"):
        load_images(path)


def test_decompression_bomb_is_one_line_naming_the_file(tmp_path, monkeypatch):
    path = save(tmp_path / "big.png", np.zeros((40, 40)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 pixels > 2 x 100: PIL's bomb error
    with pytest.raises(BadFile, match=r"big\.png") as info:
        load_images(path)
    assert "\n" not in str(info.value) and "decompression bomb" in str(info.value)


@pytest.mark.parametrize(
    "array,mode",
    [(np.array([[[255, 0, 0, 255], [9, 9, 9, 0]]], dtype=np.uint8), "RGBA"),  # transparent: white
     (np.array([[0, 128 * 257, 255 * 256, 65535]], dtype=np.uint16), None)],  # 16-bit grey: scaled
)  # fmt: skip
def test_one_decoder_for_a_file_and_a_folder(tmp_path, array, mode):
    """`ddim invert --images FILE` once decoded a file unlike the same file in a folder."""
    Image.fromarray(array, mode).save(tmp_path / "x.png")
    folder, names = load_images(tmp_path)
    single, name = load_images(tmp_path / "x.png")
    assert names == name == ["x.png"] and torch.equal(single, folder)
    assert torch.equal(single[0], ImageFolder(tmp_path)[0][0])
    expected = [[255, 255], [0, 255], [0, 255]] if mode else [[0, 128, 254, 255]]
    assert denormalize(single[0]).flatten(1).tolist() == expected


def test_load_images_resizes_converts_and_names_files(tmp_path):
    save(tmp_path / "a.png", np.zeros((6, 6)))
    save(tmp_path / "sub" / "b.png", np.full((4, 8, 3), 255))
    images, names = load_images(tmp_path, size=4, channels=3)
    assert images.shape == (2, 3, 4, 4) and names == ["a.png", "sub/b.png"]
    assert images[0].eq(-1).all() and images[1].eq(1).all()
    assert load_images(tmp_path / "sub" / "b.png", channels=1)[0].shape == (1, 1, 4, 8)
    with pytest.raises(MissingFile, match=r"nope\.png does not exist"):
        load_images(tmp_path / "nope.png")


def test_mismatched_sizes_without_resize_name_the_file_and_the_fix(tmp_path):
    save(tmp_path / "a.png", np.zeros((4, 4)))
    save(tmp_path / "b.png", np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"b\.png is 5x4 .*size="):
        ImageFolder(tmp_path)
    assert ImageFolder(tmp_path, size=4)[1][0].shape == (1, 4, 4)


# --- digits, torchvision, wrapped datasets, the entry point ----------------------------------


def test_digits_in_memory_at_16_and_8():
    ds = load_dataset("digits")
    assert len(ds) == 1797 and ds.num_classes == 10
    assert ds.images.shape == (1797, 1, 16, 16) and ds.images.dtype == torch.float32
    assert ds.images.min() == -1.0 and ds.images.max() == 1.0
    assert ds.labels.unique().tolist() == list(range(10)) and ds.labels[:3].tolist() == [0, 1, 2]
    small = load_dataset("digits", size=8)
    assert small.images.shape == (1797, 1, 8, 8)
    assert torch.all((small.images + 1) * 8 == ((small.images + 1) * 8).round())  # k/16 levels
    image, label = small[1]
    assert image.shape == (1, 8, 8) and label == 1


def test_digits_has_one_split():
    with pytest.raises(ValueError, match="split='train'"):
        load_dataset("digits", split="test")


def test_torchvision_names_load_from_a_root(tmp_path):
    pytest.importorskip("torchvision")  # the extra ddim[torchvision]
    arrays = write_mnist(tmp_path / "MNIST" / "raw", n_train=4, n_test=2, side=28)
    ds = load_dataset("mnist", root=tmp_path, split="test", size=14)
    assert ds.images.shape == (2, 1, 14, 14) and ds.labels.tolist() == [0, 1]
    full = load_dataset("mnist", root=tmp_path)
    assert torch.equal(denormalize(full.images[:, 0]), torch.from_numpy(arrays["train"][0]))
    assert full.num_classes == 10


def test_torchvision_missing_files_say_how_to_fix(tmp_path):
    pytest.importorskip("torchvision")  # the extra ddim[torchvision]
    with pytest.raises(FileNotFoundError, match="cifar10 .*not found under .*download=True"):
        load_dataset("cifar10", root=tmp_path)


def test_ddim_train_takes_a_torchvision_name_with_root(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torchvision")  # the extra ddim[torchvision]
    from ddim.cli import main

    write_mnist(tmp_path / "sets" / "MNIST" / "raw", n_train=4, n_test=2, side=28)
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--data", "mnist", "--out", "run", "--size", "8", "--device", "cpu", "--dry-run"]
    assert main([*argv, "--root", "sets"]) == 0
    data = json.loads(capsys.readouterr().out)["run"]["data"]
    assert data["root"] == str(tmp_path.resolve() / "sets") and not data["download"]
    assert (data["dataset"], data["size"], data["channels"]) == ("mnist", 8, 1)
    assert main([*argv, "--root", "elsewhere"]) == 2
    assert "--download (download=True) to fetch it, or --root" in capsys.readouterr().err


def test_torchvision_failed_download_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")  # the extra ddim[torchvision]
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(BadFile, match=r"could not download mnist \(train\) into .*unreachable\); check"):
        load_dataset("mnist", root=tmp_path, download=True)
    with pytest.raises(MissingFile, match=r"--download \(download=True\).*--root \(root=\)"):
        load_dataset("mnist", root=tmp_path)


def test_torchvision_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(BadValue, match=r"needs torchvision: pip install \"ddim\[torchvision\]\""):
        load_dataset("fashion_mnist")  # the underscore spelling names the same set


def test_unknown_name_and_missing_path():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*digits.*cifar10"):
        load_dataset("imagenet")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("./no/such/folder")
    assert "digits" in DATASET_NAMES and "fashion-mnist" in DATASET_NAMES


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="channels"):
        load_dataset("digits", channels=2)
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", split="valid")
    with pytest.raises(ValueError, match="size"):
        load_dataset("digits", size=(4, 4, 4))


def test_any_dataset_is_wrapped_into_the_contract():
    u8 = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
    bare = load_dataset(TensorDataset(u8), channels=3, size=(2, 2))
    image, label = bare[0]
    assert image.shape == (3, 2, 2) and image.dtype == torch.float32 and label == -1
    rgb = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    grey, _ = load_dataset(TensorDataset(rgb), channels=1)[1]
    pil = np.array(Image.fromarray(rgb[1].permute(1, 2, 0).numpy()).convert("L"))
    assert grey.shape == (1, 5, 5)
    assert (denormalize(grey)[0].int() - torch.from_numpy(pil).int()).abs().max() <= 1
    labelled = load_dataset(TensorDataset(u8, torch.tensor([4, 5, 6])))
    image, label = labelled[2]
    assert torch.equal(denormalize(image), u8[2]) and label == 6 and isinstance(label, int)


def test_tensor_dataset_validates_and_flips():
    with pytest.raises(ValueError, match="labels"):
        TensorImageDataset(torch.zeros(3, 1, 2, 2), torch.zeros(2))
    x = torch.tensor([[-1.0, 1.0]]).reshape(1, 1, 1, 2)
    ds = TensorImageDataset(x, flip=True)
    torch.manual_seed(0)
    assert {ds[0][0].flatten()[0].item() for _ in range(30)} == {-1.0, 1.0}
    assert ds[0][1] == -1 and ds.num_classes is None


def test_data_config_round_trips_through_json_and_builds(tmp_path):
    config = DataConfig("digits", size=(8, 12), channels=3, flip=True)
    again = DataConfig(**json.loads(json.dumps(dataclasses.asdict(config))))
    assert again == config and again.size == (8, 12)
    ds = build_dataset(again)
    assert ds.images.shape == (1797, 3, 8, 12) and ds.flip
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.size = 4
