"""Train the digit classifier behind `ddim.evaluation.DigitFeatures` and write its weights.

One `DigitClassifier` with a 30-way head: MNIST classes 0-9, the built-in sklearn digits
(upsampled 8x8 -> 28x28) 10-19, Fashion-MNIST 20-29, so one network gives features for all
three. The digits have no test split: a seeded 20% is held out (and oversampled 8x in training,
as there are only 1,797). Adam with a cosine learning rate, one CPU thread, a few minutes.
Prints test accuracy per dataset, both within its own 10-way head and over all 30 classes.

Run: python tools/train_digit_classifier.py --mnist /work/shared/data/mnist \
    --fashion /work/shared/data/fashion-mnist
"""

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from ddim.data import load_dataset
from ddim.evaluation.features import DIGIT_HEADS, DigitClassifier

OUT = Path(__file__).resolve().parents[1] / "src/ddim/assets/digit_classifier.safetensors"


def splits(mnist: str, fashion: str, seed: int) -> dict[str, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """head name -> (train images, train labels, test images, test labels), images 1x28x28 in [-1, 1]."""
    out = {}
    for name, spec in zip(DIGIT_HEADS, (mnist, "digits", fashion)):
        if name == "digits":
            d = load_dataset("digits", size=28)
            perm = torch.randperm(len(d), generator=torch.Generator().manual_seed(seed))
            cut = int(0.8 * len(d))
            tr, te = perm[:cut], perm[cut:]
            out[name] = d.images[tr], d.labels[tr], d.images[te], d.labels[te]
        else:
            tr, te = load_dataset(spec, split="train"), load_dataset(spec, split="test")
            out[name] = tr.images, tr.labels, te.images, te.labels
    return out


@torch.no_grad()
def accuracy(model: DigitClassifier, images: Tensor, labels: Tensor, head: int) -> tuple[float, float]:
    """(accuracy within the head's 10 classes, accuracy over all 30 classes)."""
    logits = torch.cat([model(b) for b in images.split(1000)])
    within = logits[:, 10 * head : 10 * head + 10].argmax(1) == labels
    overall = logits.argmax(1) == labels + 10 * head
    return within.float().mean().item(), overall.float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mnist", required=True, help="folder of MNIST IDX files")
    parser.add_argument("--fashion", required=True, help="folder of Fashion-MNIST IDX files")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--digits-repeat", type=int, default=8, help="oversampling of the small digits set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    data = splits(args.mnist, args.fashion, args.seed)
    xs, ys = [], []
    for head, (name, (x, y, _, _)) in enumerate(data.items()):
        repeat = args.digits_repeat if name == "digits" else 1
        xs.append(x.repeat(repeat, 1, 1, 1))
        ys.append(y.repeat(repeat) + 10 * head)
    x_train, y_train = torch.cat(xs), torch.cat(ys)

    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = args.epochs * math.ceil(len(x_train) / args.batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    start = time.perf_counter()
    for epoch in range(args.epochs):
        for idx in torch.randperm(len(x_train)).split(args.batch):
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}: last loss {loss.item():.4f}, {time.perf_counter() - start:.0f} s")

    model.eval()
    metadata = {"trained_by": "tools/train_digit_classifier.py", "heads": ",".join(DIGIT_HEADS)}
    print(f"{'dataset':<14} {'n test':>6} {'acc (own head)':>15} {'acc (30-way)':>13}")
    for head, (name, (_, _, x, y)) in enumerate(data.items()):
        within, overall = accuracy(model, x, y, head)
        metadata[f"test_accuracy_{name}"] = f"{within:.4f}"
        print(f"{name:<14} {len(y):>6} {within:>15.4f} {overall:>13.4f}")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, args.out, metadata=metadata)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
