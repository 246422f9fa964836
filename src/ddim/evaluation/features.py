"""Feature extractors for the metrics: images [N, C, H, W] in [-1, 1] -> features [N, D].

Owns the two built-in extractors and the helper that runs any extractor over a whole set:

- `DigitFeatures`: the 128-d penultimate layer of `DigitClassifier`, a small CNN the project
  trains (tools/train_digit_classifier.py) on MNIST, the built-in sklearn digits and Fashion-MNIST
  with one 30-way head (10 classes each, in that order), shipped in
  assets/digit_classifier.safetensors. An offline metric for those three kinds of data.
- `InceptionFeatures`: Inception-v3 pool3 (2048-d) in the pytorch-fid convention (Heusel et al.
  2017 via mseitzer/pytorch-fid): torchvision's Inception3 with the FID-specific blocks, input
  resized to 299x299 bilinearly, weights from the file pt_inception-2015-12-05-6726825d.pth,
  which the user supplies.
- `get_features(name)` and `embed(features, images)`.

Any callable with the same contract can stand in for these; give it a string attribute `id` to
let `evaluate` cache reference features for it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load
from torch import Tensor, nn
from torch.utils.data import Dataset

from ddim.data import TORCHVISION_EXTRA, fit_size, match_channels
from ddim.errors import BadFile, BadValue, MissingFile

FeatureFn = Callable[[Tensor], Tensor]

DIGIT_HEADS = ("mnist", "digits", "fashion-mnist")  # logits [10 h, 10 h + 10) belong to head h
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256_PREFIX = "6726825d"  # torch hub names files by their hash prefix
INCEPTION_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{INCEPTION_FILE}"


class DigitClassifier(nn.Module):
    """Three 3x3 conv + max-pool stages (16, 32, 64 channels) on 1x28x28, then 576 -> 128 -> 30.
    The hidden layer is batch-normalised before its ReLU: without, about half its units die."""

    def __init__(self, width: int = 16, dim: int = 128, num_classes: int = 10 * len(DIGIT_HEADS)) -> None:
        super().__init__()
        channels = (1, width, 2 * width, 4 * width)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.convs = nn.Sequential(*layers, nn.Flatten())
        self.hidden = nn.Sequential(nn.Linear(4 * width * 3 * 3, dim), nn.BatchNorm1d(dim))
        self.head = nn.Linear(dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The penultimate layer, [N, dim] (after its ReLU)."""
        return F.relu(self.hidden(self.convs(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def digit_input(images: Tensor) -> Tensor:
    """Images [N, C, H, W] in [-1, 1] -> [N, 1, 28, 28]: luma if colour, resized as `ddim.data` does."""
    return fit_size(match_channels(images.float(), 1), (28, 28))


class DigitFeatures:
    """The shipped digit classifier's 128-d penultimate layer (see the module docstring)."""

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> None:
        if weights is None:
            data = resources.files("ddim").joinpath("assets/digit_classifier.safetensors").read_bytes()
        else:
            data = Path(weights).read_bytes()
        self.model = DigitClassifier().eval().requires_grad_(False)
        self.model.load_state_dict(load(data))
        self.model.to(device)
        self.device = torch.device(device)
        self.id = f"digits-{hashlib.sha256(data).hexdigest()[:8]}"

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        return self.model.features(digit_input(images.to(self.device)))

    @torch.no_grad()
    def logits(self, images: Tensor) -> Tensor:
        """[N, 30] class scores; head h (see `DIGIT_HEADS`) is `logits[:, 10 * h : 10 * h + 10]`."""
        return self.model(digit_input(images.to(self.device)))


def default_inception_path() -> Path:
    """Where pytorch-fid's download lands, which is also where we look: torch hub's checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def _fid_inception() -> nn.Module:
    """torchvision's Inception3 with pytorch-fid's FID blocks: TF's average pool excludes padding
    (blocks A, C, E_1) and the last block max-pools (E_2), as the TF graph of 2015-12-05 does."""
    try:
        from torchvision.models import inception as tvi
    except ImportError as e:
        raise BadValue(
            f"Inception features need torchvision: {TORCHVISION_EXTRA}; without it use "
            "features='digits' (--features digits) or pass your own feature callable"
        ) from e

    def avg_pool(x: Tensor) -> Tensor:
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    class FIDInceptionA(tvi.InceptionA):
        def forward(self, x: Tensor) -> Tensor:
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(avg_pool(x))], 1)

    class FIDInceptionC(tvi.InceptionC):
        def forward(self, x: Tensor) -> Tensor:
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            bd = x
            for i in range(1, 6):
                bd = getattr(self, f"branch7x7dbl_{i}")(bd)
            return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(avg_pool(x))], 1)

    class FIDInceptionE(tvi.InceptionE):
        def __init__(self, in_channels: int, max_pool: bool) -> None:
            super().__init__(in_channels)
            self.max_pool = max_pool

        def forward(self, x: Tensor) -> Tensor:
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
            pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else avg_pool(x)
            return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)

    net = tvi.Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    for name, c_in, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        setattr(net, name, FIDInceptionA(c_in, pool_features=pool))
    for name, c7 in zip(("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"), (128, 160, 160, 192)):
        setattr(net, name, FIDInceptionC(768, channels_7x7=c7))
    net.Mixed_7b, net.Mixed_7c = FIDInceptionE(1280, max_pool=False), FIDInceptionE(2048, max_pool=True)
    return net


_POOL3_PATH = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool",
)  # fmt: skip


class InceptionFeatures:
    """Inception-v3 pool3 features (2048-d) as pytorch-fid computes them, for FID/KID/PR on
    natural images. `weights`: the path of pt_inception-2015-12-05-6726825d.pth (default: torch
    hub's checkpoints folder, where pytorch-fid downloads it). Grey images are repeated to RGB."""

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> None:
        path = Path(weights).expanduser() if weights is not None else default_inception_path()
        if not path.is_file():
            raise MissingFile(
                f"Inception weights not found at {path}. Download {INCEPTION_URL} on a machine with "
                f"internet access and pass its path (weights=...), or place it at {default_inception_path()}"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as e:
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            raise BadFile(f"cannot read {path} ({reason}); download {INCEPTION_FILE} again") from e
        if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state:
            raise BadFile(f"{path} is not the FID Inception state dict; expected {INCEPTION_FILE}")
        self.model = _fid_inception()
        try:
            self.model.load_state_dict(state)
        except RuntimeError as e:
            reason = " ".join(str(e).split())[:200]
            raise BadFile(
                f"{path} is not the FID Inception state dict ({reason}); expected {INCEPTION_FILE}"
            ) from e
        self.model.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
        if digest != INCEPTION_SHA256_PREFIX:
            warnings.warn(
                f"{path} is not {INCEPTION_FILE} (sha256 {digest}...): FIDs will not compare", stacklevel=2
            )
        self.id = f"inception-pool3-{digest}"

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        x = match_channels(images.to(self.device, torch.float32), 3)
        # pytorch-fid resizes with bilinear interpolation (no antialiasing) to 299x299
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        for name in _POOL3_PATH:
            x = getattr(self.model, name)(x)
        return x.flatten(1)


def get_features(name: str | FeatureFn, **kwargs: object) -> FeatureFn:
    """Features by name: "digits" -> `DigitFeatures(**kwargs)`, "inception" ->
    `InceptionFeatures(**kwargs)`; a callable is returned as it is."""
    if callable(name):
        return name
    makers = {"digits": DigitFeatures, "inception": InceptionFeatures}
    if name not in makers:
        raise BadValue(f"unknown features {name!r}; use one of {sorted(makers)} or a callable")
    return makers[name](**kwargs)


def embed(features: FeatureFn, images: Tensor | Dataset, batch_size: int = 250) -> Tensor:
    """Run `features` over `images` ([N, C, H, W] in [-1, 1]: a tensor or anything sliced like
    one, such as `ddim.evaluation.samples.NpzImages`; or a dataset of (image, label)) in
    batches; returns float32 [N, D] on the CPU."""
    n = len(images)
    out = []
    for start in range(0, n, batch_size):
        if not isinstance(images, Dataset):
            batch = images[start : start + batch_size]
        else:
            batch = torch.stack([images[i][0] for i in range(start, min(n, start + batch_size))])
        out.append(features(batch).float().flatten(1).cpu())
    if not out:
        raise BadValue("no images to embed")
    return torch.cat(out)
