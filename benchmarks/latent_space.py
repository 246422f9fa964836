"""DDIM's latent space on a trained model: exact samplers against DDIM, Table 2 with the exact
sampler, inpainting, SDEdit, and the pictures of docs/latent.md.

    python benchmarks/latent_space.py --checkpoint runs/mnist16 --images ../shared/data/mnist \
        --out docs/latent

Prints markdown tables (and writes them to OUT/tables.md) and writes OUT/*.png:
1. FD at 10 and 20 model calls, each exact sampler against DDIM (eta 0), all from the same x_T.
2. Table 2 (DDIM sec. 5.4): reconstruction MSE of x0 -> latent -> x0 on test images, float32.
3. Inpainting the right half of test digits from the left half: the digit classifier's accuracy
   on the fills (against the true labels) and FD to real digits.
4. SDEdit at strengths 0.2 ... 1.0: FD to real digits, RMS distance to the input, and how often
   the classifier still gives the input's label.
FD is the Frechet distance on the shipped digit classifier's features against `--n-reference`
training digits; the floor line is real test digits against the same reference.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import ddim
from ddim.data import load_dataset
from ddim.evaluation.features import DigitFeatures, embed
from ddim.evaluation.metrics import feature_statistics, frechet_distance
from ddim.images import save_grid
from ddim.training import load_checkpoint


def batched(fn, x: torch.Tensor, batch: int, *rest) -> torch.Tensor:
    """fn over x in batches, with per-example noise keyed to the global index (seed 0)."""
    out = []
    for i in range(0, len(x), batch):
        part = x[i : i + batch]
        out.append(fn(part, ddim.PerSampleNoise.from_seed(0, len(part), i), *rest))
    return torch.cat(out)


class Bench:
    def __init__(self, args):
        self.args = args
        ck = load_checkpoint(args.checkpoint)
        self.ck, self.model, self.schedule, self.prediction = ck, ck.model, ck.schedule, ck.prediction
        size = ck.config.data.size
        self.shape = (ck.config.model.in_channels, size, size)
        test = load_dataset(args.images, size=size, split="test")
        self.test, self.labels = test.images, test.labels
        ref = load_dataset(args.images, size=size, split="train").images
        g = torch.Generator().manual_seed(0)
        ref = ref[torch.randperm(len(ref), generator=g)[: args.n_reference]]
        self.features = DigitFeatures()
        self.ref_stats = feature_statistics(embed(self.features, ref))
        self.floor = self.fd(self.test[: args.n])

    def fd(self, images: torch.Tensor) -> float:
        return frechet_distance(*feature_statistics(embed(self.features, images)), *self.ref_stats)

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        logits = torch.cat([self.features.logits(images[i : i + 500]) for i in range(0, len(images), 500)])
        return (logits[:, :10].argmax(1) == labels).float().mean().item()  # head 0: MNIST

    def kw(self, **more):
        return dict(prediction=self.prediction, self_condition=self.ck.self_condition, **more)

    # 1 ---------------------------------------------------------------------------------------------
    def quality(self) -> list[dict]:
        a = self.args
        x_T = ddim.PerSampleNoise.from_seed(0, a.n).randn(self.shape)
        rows = []
        for calls in (10, 20):
            for sampler in ("ddim", *ddim.EXACT_INVERTIBLE):
                started = time.perf_counter()
                out = torch.cat([
                    ddim.sample(self.model, x_T[i : i + a.batch], self.schedule, calls, sampler=sampler,
                                clip=1.0, **self.kw())
                    for i in range(0, a.n, a.batch)
                ])  # fmt: skip
                rows.append(dict(calls=calls, sampler=sampler, fd=self.fd(out),
                                 seconds=time.perf_counter() - started))  # fmt: skip
                print(rows[-1], flush=True)
                if calls == 10:
                    save_grid(out[:64], Path(a.out) / f"samples-{sampler}-10.png", nrow=16)
        return rows

    # 2 ---------------------------------------------------------------------------------------------
    def reconstruction(self) -> list[dict]:
        """The first exact sampler and DDIM at 10, 20, 50 steps, the other exact samplers at 10,
        DDIM with refine=5 at 10 and 20 (its encoder makes 6 model calls a step)."""
        x0 = self.test[: self.args.n_reconstruct]
        first, *others = ddim.EXACT_INVERTIBLE
        variants = [(first, {}, (10, 20, 50))] + [(s, {}, (10,)) for s in others]
        variants += [("ddim", {}, (10, 20, 50)), ("ddim", {"refine": 5}, (10, 20))]
        rows = []
        for sampler, extra, all_steps in variants:
            for steps in all_steps:
                started = time.perf_counter()
                z = ddim.invert(self.model, x0, self.schedule, steps, sampler=sampler, **extra, **self.kw())
                rec = ddim.sample(self.model, z, self.schedule, steps, sampler=sampler, **self.kw())
                name = sampler + (f", refine={extra['refine']}" if extra else "")
                rows.append(dict(variant=name, steps=steps, mse=(rec - x0).pow(2).mean().item(),
                                 seconds=time.perf_counter() - started))  # fmt: skip
                print(rows[-1], flush=True)
        return rows

    # 3 ---------------------------------------------------------------------------------------------
    def inpainting(self) -> dict:
        a = self.args
        x0, labels = self.test[: a.n_inpaint], self.labels[: a.n_inpaint]
        mask = torch.zeros(1, *self.shape)
        mask[..., self.shape[-1] // 2 :] = 1  # generate the right half
        started = time.perf_counter()

        def fill(part, noise):
            return ddim.inpaint(self.model, part, mask, self.schedule, generator=noise, clip=1.0,
                                resample=a.inpaint_resample, **self.kw())  # fmt: skip

        out = batched(fill, x0, a.batch)
        blank = torch.where(mask.bool(), -torch.ones_like(x0), x0)  # the left half alone
        row = dict(n=len(x0), accuracy=self.accuracy(out, labels), fd=self.fd(out),
                   accuracy_left_half=self.accuracy(blank, labels), fd_left_half=self.fd(blank),
                   accuracy_originals=self.accuracy(x0, labels),
                   seconds=time.perf_counter() - started)  # fmt: skip
        print(row, flush=True)
        k = 12
        save_grid(torch.cat([x0[:k], blank[:k], out[:k]]), Path(a.out) / "inpaint.png", nrow=k)
        return row

    # 4 ---------------------------------------------------------------------------------------------
    def edits(self) -> list[dict]:
        a = self.args
        x0, labels = self.test[: a.n_edit], self.labels[: a.n_edit]
        rows, pictures = [], {}
        for strength in (0.2, 0.4, 0.6, 0.8, 1.0):

            def run(part, noise, s=strength):
                return ddim.edit(self.model, part, self.schedule, s, a.edit_steps, generator=noise, clip=1.0,
                                 **self.kw())  # fmt: skip

            out = batched(run, x0, a.batch)
            rms = (out - x0).flatten(1).pow(2).mean(1).sqrt().mean().item()
            rows.append(dict(strength=strength, fd=self.fd(out), rms_to_input=rms,
                             same_label=self.accuracy(out, labels)))  # fmt: skip
            print(rows[-1], flush=True)
            pictures[strength] = out
        k = 12
        grid = [x0[:k]] + [pictures[s][:k] for s in (0.4, 0.6, 0.8)]
        save_grid(torch.cat(grid), Path(a.out) / "edit.png", nrow=k)
        return rows

    # pictures --------------------------------------------------------------------------------------
    def interpolation(self) -> None:
        a, steps, n = self.args, 20, 9
        rows = []
        for i, j in ((0, 1), (2, 3), (4, 7)):
            ends = self.test[[i, j]]
            for sampler in (ddim.EXACT_INVERTIBLE[0], "ddim"):
                z = ddim.invert(self.model, ends, self.schedule, steps, sampler=sampler, **self.kw())
                zs = ddim.interpolate_latents(z[:1], z[1:], n)
                rows.append(ddim.sample(self.model, zs, self.schedule, steps, sampler=sampler, **self.kw()))
        save_grid(torch.cat(rows), Path(a.out) / "interpolate.png", nrow=n)


def table(rows: list[dict], keys: list[str], fmt: dict) -> str:
    head = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    return head + "".join(
        "| " + " | ".join(fmt.get(k, "{}").format(r[k]) for k in keys) + " |\n" for r in rows
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True, help="an MNIST-style IDX folder (train and test)")
    p.add_argument("--out", default="docs/latent")
    p.add_argument("--n", type=int, default=2000, help="samples per FD cell")
    p.add_argument("--n-reference", type=int, default=10000)
    p.add_argument("--n-reconstruct", type=int, default=256)
    p.add_argument("--n-inpaint", type=int, default=1000)
    p.add_argument("--n-edit", type=int, default=1000)
    p.add_argument("--inpaint-resample", type=int, default=ddim.editing.INPAINT_RESAMPLE)
    p.add_argument("--edit-steps", type=int, default=20, help="the grid SDEdit keeps the part of")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--only", default="quality,reconstruction,inpainting,edits,pictures")
    a = p.parse_args()
    torch.set_num_threads(1)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    b = Bench(a)
    only = a.only.split(",")
    text = f"Checkpoint {b.ck.path} (step {b.ck.step}); FD floor (real test digits): {b.floor:.3f}\n\n"
    if "quality" in only:
        rows = b.quality()
        text += f"### FD at 10 and 20 model calls ({a.n} samples, same x_T)\n\n"
        text += (
            table(rows, ["calls", "sampler", "fd", "seconds"], {"fd": "{:.3f}", "seconds": "{:.0f}"}) + "\n"
        )
    if "reconstruction" in only:
        rows = b.reconstruction()
        text += f"### Table 2: reconstruction MSE, x0 -> latent -> x0 ({a.n_reconstruct} test images)\n\n"
        text += (
            table(rows, ["variant", "steps", "mse", "seconds"], {"mse": "{:.3g}", "seconds": "{:.0f}"}) + "\n"
        )
    if "inpainting" in only:
        row = b.inpainting()
        text += f"### Inpainting the right half (25 steps x {a.inpaint_resample})\n\n" + table(
            [row], list(row), {k: "{:.3f}" for k in row if k != "n"}
        )
        text += "\n"
    if "edits" in only:
        rows = b.edits()
        text += f"### SDEdit ({a.n_edit} test images, ddim on {a.edit_steps} trailing steps, eta 0)\n\n"
        text += (
            table(rows, ["strength", "fd", "rms_to_input", "same_label"], {k: "{:.3f}" for k in rows[0]})
            + "\n"
        )
    if "pictures" in only:
        b.interpolation()
    text += f"\n({time.perf_counter() - started:.0f} s in all, one thread)\n"
    (Path(a.out) / "tables.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
