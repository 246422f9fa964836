"""The training loop: one explicit function, `train`, and the pure pieces it is built from.

Each optimizer step: LR warm-up (`lr_at`), `batch_size` examples in `grad_accum` micro-batches,
the per-example loss of `ddim.objectives.diffusion_loss` reduced by its mean, optional bf16
autocast, gradient clipping, AdamW, then the EMA update (`ddim.training.ema`). Randomness comes
from the run's seed only: the model's initialisation and dropout from torch's global RNG, the
data order from `IndexStream` (a function of the seed and the number of examples seen), flips and
label dropout from one CPU generator, timesteps and noise from one generator on the device. A
checkpoint stores all of them, so a resumed run continues exactly as an uninterrupted one would.

Under torchrun the model is wrapped in DistributedDataParallel and `batch_size` stays the global
batch: every process reads the same global order and keeps its share (`ddim.distributed.shard`),
and every random draw is made for the global batch, so N processes compute what one process
does, and a checkpoint written with N processes resumes with M. Side effects (progress bar, CSV
and TensorBoard logs, sample grids, checkpoints) happen only on rank 0 (`is_main_process()`).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from ddim.config import RunConfig, resolve_device
from ddim.data import build_dataset, random_flip
from ddim.distributed import init_from_env, is_distributed, is_main_process, rank, shard, world_size
from ddim.errors import BadValue
from ddim.images import save_grid
from ddim.models import UNet
from ddim.noise import seed_for
from ddim.objectives import diffusion_loss
from ddim.training.checkpoint import (
    CHECKPOINTS,
    EMA,
    MODEL,
    list_checkpoints,
    load_weights,
    read_config,
    read_state,
    save_checkpoint,
    step_dir_name,
)
from ddim.training.ema import ema_decay_at, ema_update
from ddim.training.preview import sample_images

# keys of the independent random streams derived from the run's seed
_DATA_ORDER, _NOISE, _AUGMENT = 1, 2, 3
LOG_FIELDS = ("step", "loss", "lr", "grad_norm", "ema_decay", "images_per_s", "elapsed_s")


def lr_at(step: int, base: float, warmup: int) -> float:
    """Linear warm-up to `base` over the first `warmup` steps (Goyal et al. 2017, sec. 2.2), then
    constant; `step` is 0-based, so step warmup - 1 is the first at the full rate."""
    if warmup <= 0:
        return base
    return base * min(1.0, (step + 1) / warmup)


class IndexStream:
    """An endless, reproducible order of the indices 0..n-1: one random permutation per epoch,
    epoch e's seeded by (seed, e). The examples at stream positions [p, p + k) are a function of
    p alone, so resuming needs only the position and batches may span epochs."""

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise BadValue("the dataset is empty")
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.int64)

    def permutation(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(seed_for(self.seed, epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=generator)
        return self._perm

    def take(self, position: int, count: int) -> Tensor:
        parts = []
        while count > 0:
            epoch, offset = divmod(position, self.n)
            part = self.permutation(epoch)[offset : offset + count]
            parts.append(part)
            position, count = position + len(part), count - len(part)
        return torch.cat(parts)


class _StreamBatches(Sampler):
    """A DataLoader batch sampler reading an IndexStream from a position, forever: global batches
    of `batch` indices, of which it yields this process's share [lo, hi)."""

    def __init__(self, stream: IndexStream, position: int, batch: int, share: tuple[int, int]):
        self.stream, self.position, self.batch, self.share = stream, position, batch, share

    def __iter__(self):
        position, (lo, hi) = self.position, self.share
        while True:
            yield self.stream.take(position, self.batch)[lo:hi].tolist()
            position += self.batch


class Batches:
    """Micro-batches (images, labels) on the CPU, in the stream's order from `position`: this
    process's share of each global micro-batch of `batch` examples.

    In-memory datasets (`.images` and `.labels` tensors) are indexed directly; others go through
    a DataLoader. Flips (the dataset's `flip` flag) are drawn here, from `generator`, so they
    depend neither on worker processes nor on the global RNG."""

    def __init__(self, dataset: Dataset, seed: int, batch: int, position: int, num_workers: int = 0):
        self.stream = IndexStream(len(dataset), seed)
        self.batch, self.position = batch, position
        self.share = shard(batch, "micro-batch (batch_size / grad_accum)")
        self.flip = bool(getattr(dataset, "flip", False))
        images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
        self.in_memory = isinstance(images, Tensor) and isinstance(labels, Tensor)
        if self.in_memory:
            self.images, self.labels = images, labels
        else:
            if self.flip:
                dataset = copy.copy(dataset)  # the caller's dataset keeps its flag
                dataset.flip = False
            sampler = _StreamBatches(self.stream, position, batch, self.share)
            # a generator of its own, so that the loader never draws from torch's global RNG
            generator = torch.Generator().manual_seed(seed)
            loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, generator=generator)
            self.loader = iter(loader)

    def next(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        if self.in_memory:
            idx = self.stream.take(self.position, self.batch)[self.share[0] : self.share[1]]
            images, labels = self.images[idx], self.labels[idx]
        else:
            images, labels = next(self.loader)
        self.position += self.batch
        if self.flip:
            images = random_flip(images, generator, shard=(rank(), world_size()))
        return images, torch.as_tensor(labels)


def _check_dataset(dataset: Dataset, run: RunConfig) -> tuple[int, ...]:
    """The shape [C, H, W] of the dataset's images, after checking them against the model."""
    images = getattr(dataset, "images", None)
    shape = tuple(images.shape[1:]) if isinstance(images, Tensor) else tuple(dataset[0][0].shape)
    cfg = run.model
    if len(shape) != 3 or shape[0] != cfg.in_channels:
        raise BadValue(
            f"the dataset's images have shape {shape} but the model takes {cfg.in_channels} channel(s); "
            "set model.in_channels (and out_channels) or data.channels to match"
        )
    data_classes = getattr(dataset, "num_classes", None)
    if cfg.num_classes is not None and (data_classes is None or data_classes > cfg.num_classes):
        raise BadValue(
            f"the model is class-conditional with num_classes={cfg.num_classes} but the dataset has "
            f"{'no labels' if data_classes is None else f'{data_classes} classes'}; set model.num_classes "
            "to the dataset's number of classes, or to None for an unconditional model"
        )
    return shape


class _Log:
    """The CSV log (and TensorBoard when it imports) plus the running means between two lines."""

    def __init__(self, out_dir: Path, start_step: int):
        self.file = out_dir / "log.csv"
        rows = []
        if start_step > 0 and self.file.is_file():  # drop lines a crashed run wrote after its checkpoint
            with self.file.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
        with self.file.open("w", newline="") as f:
            writer = csv.DictWriter(f, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(
                out_dir / "tensorboard", purge_step=start_step + 1 if start_step else None
            )
        except ImportError:
            self.tensorboard = None
        self.started = time.perf_counter()
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.steps, self.images, self.paused = 0.0, 0, 0, 0.0
        self.since = time.perf_counter()

    def add(self, loss: Tensor | float, images: int) -> None:
        self.loss_sum, self.steps, self.images = self.loss_sum + loss, self.steps + 1, self.images + images

    def write(self, step: int, **values: float) -> dict[str, float]:
        now = time.perf_counter()
        row = {
            "step": step,
            "loss": float(self.loss_sum) / max(self.steps, 1),  # float() waits for the device
            **values,
            "images_per_s": self.images / max(now - self.since - self.paused, 1e-9),
            "elapsed_s": now - self.started,
        }
        with self.file.open("a", newline="") as f:
            csv.DictWriter(f, LOG_FIELDS).writerow(row)
        if self.tensorboard is not None:
            for key in LOG_FIELDS[1:]:
                self.tensorboard.add_scalar(key, row[key], step)
        self.reset()
        return row

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _rng_state(data_gen: torch.Generator, noise_gen: torch.Generator, device: torch.device) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "data": data_gen.get_state(),
        "noise": noise_gen.get_state(),
    }


def _set_rng_state(state: dict, data_gen: torch.Generator, noise_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    data_gen.set_state(state["data"])
    noise_gen.set_state(state["noise"])


def train(
    run: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    dataset: Dataset | None = None,
) -> Path:
    """Train `run` and write its logs, sample grids and checkpoints under `out_dir`; return the
    newest checkpoint folder. `dataset` (any Dataset under ddim.data's contract) replaces
    `run.data`. With `resume`, continue from the newest checkpoint in `out_dir` (its model and
    diffusion config must match `run`; `train.steps` may be raised to train longer); without it,
    `out_dir` must hold no checkpoints. Seeds torch's global RNG with `train.seed`."""
    cfg, out_dir = run.train, Path(out_dir)
    device = init_from_env(resolve_device(cfg.device))
    main, sharding = is_main_process(), (rank(), world_size())
    ckpt_root = out_dir / CHECKPOINTS
    existing = list_checkpoints(ckpt_root)
    if existing and not resume:
        raise BadValue(
            f"{ckpt_root} already holds checkpoints (newest {existing[-1].name}); pass resume=True to "
            "continue that run, or choose another output folder"
        )
    dataset = build_dataset(run.data) if dataset is None else dataset
    shape = _check_dataset(dataset, run)
    schedule = run.diffusion.make_schedule()

    torch.manual_seed(cfg.seed)
    model = UNet(run.model)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    data_gen = torch.Generator().manual_seed(seed_for(cfg.seed, _AUGMENT))
    noise_gen = torch.Generator(device).manual_seed(seed_for(cfg.seed, _NOISE))
    step, position, state = 0, 0, None
    if resume and existing:
        saved, step = read_config(existing[-1])
        if (saved.model, saved.diffusion) != (run.model, run.diffusion):
            raise BadValue(
                f"{existing[-1]} was trained with another model or diffusion config; resume with the "
                "config saved in its config.json, or start a new run in another folder"
            )
        load_weights(existing[-1] / MODEL, model)
        load_weights(existing[-1] / EMA, ema)
        state = read_state(existing[-1])
        position = state["data_position"]
    model.to(device).train()
    ema.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"], data_gen, noise_gen)
    batches = Batches(dataset, seed_for(cfg.seed, _DATA_ORDER), cfg.micro_batch, position, cfg.num_workers)
    params, ema_tensors = list(model.state_dict().values()), list(ema.state_dict().values())
    net = model
    if is_distributed():  # gradients are averaged over the processes (DDP all-reduce)
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    num_classes = run.model.num_classes
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")

    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        log = _Log(out_dir, step)
    bar = tqdm(
        total=cfg.steps, initial=step, disable=not (progress and main), unit="step", dynamic_ncols=True
    )
    try:
        while step < cfg.steps:
            lr = lr_at(step, cfg.lr, cfg.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro in range(cfg.grad_accum):
                x0, labels = batches.next(data_gen)
                kwargs = None
                if num_classes is not None:  # classifier-free guidance training (Ho & Salimans 2022)
                    n, (r, k) = len(labels), sharding
                    drop = torch.rand(n * k, generator=data_gen)[r * n : (r + 1) * n] < cfg.label_dropout
                    kwargs = {"y": torch.where(drop, num_classes, labels).to(device)}
                last = micro == cfg.grad_accum - 1
                sync = net.no_sync() if net is not model and not last else contextlib.nullcontext()
                with sync, autocast:
                    loss = diffusion_loss(
                        net,
                        x0.to(device, non_blocking=True),
                        schedule,
                        prediction=run.diffusion.prediction,
                        weighting=cfg.weighting,
                        min_snr_gamma=cfg.min_snr_gamma,
                        offset_noise=cfg.offset_noise,
                        self_condition=run.model.self_condition,
                        generator=noise_gen,
                        model_kwargs=kwargs,
                        shard=sharding,
                    ).mean()
                    (loss / cfg.grad_accum).backward()
                step_loss = step_loss + loss.detach() / cfg.grad_accum
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
            decay = ema_decay_at(step, cfg.ema_decay, cfg.ema_warmup)
            ema_update(ema_tensors, params, decay)
            step += 1
            bar.update(1)
            if not main:
                continue
            log.add(step_loss, cfg.batch_size)
            if (cfg.log_every and step % cfg.log_every == 0) or step == cfg.steps:
                row = log.write(step, lr=lr, grad_norm=float(grad_norm), ema_decay=decay)
                bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.0f}")
            paused_at = time.perf_counter()
            if cfg.sample_every and step % cfg.sample_every == 0:
                images = sample_images(ema, run, shape, device)
                save_grid(images, out_dir / "samples" / f"{step_dir_name(step)}.png")
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
                train_state = {
                    "step": step,
                    "data_position": batches.position,
                    "optimizer": optimizer.state_dict(),
                    "rng": _rng_state(data_gen, noise_gen, device),
                }
                save_checkpoint(
                    ckpt_root, step, run, model.state_dict(), ema.state_dict(), train_state, cfg.keep_last
                )
            log.paused += time.perf_counter() - paused_at
    finally:
        bar.close()
        if main:
            log.close()
    if is_distributed():
        dist.barrier()  # the other ranks wait for rank 0's last checkpoint
    return list_checkpoints(ckpt_root)[-1]
