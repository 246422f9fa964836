"""The training loop: one explicit function, `train`, and the pure pieces it is built from.

Each optimizer step: LR warm-up (`lr_at`), `batch_size` examples in `grad_accum` micro-batches,
the per-example loss of `ddim.objectives.diffusion_loss` reduced by its mean, optional bf16
autocast, gradient clipping, AdamW, then the EMA update (`ddim.training.ema`). Randomness comes
from the run's seed only: the model's initialisation and dropout from torch's global RNG, the
data order from `IndexStream` (a function of the seed and the number of examples seen), flips and
label dropout from one CPU generator, timesteps and noise from one generator on the device. A
checkpoint stores all of them, so a resumed run continues exactly as an uninterrupted one would.

Under torchrun the model is wrapped in DistributedDataParallel and `batch_size` stays the global
batch: every process reads the same global order and keeps its share (`ddim.distributed.share_bounds`),
and every random draw is made for the global batch, so N processes compute what one process
does, and a checkpoint written with N processes resumes with M. Side effects (progress bar, CSV
and TensorBoard logs, sample grids, checkpoints) happen only on rank 0 (`is_main_process()`).

Nothing is lost: rank 0 holds the run folder's lock (`run_folder.RunFolder`); each step's
checkpoint is written before its log line and sample grid; a non-finite loss or gradient stops
the run before the optimizer uses it; SIGINT/SIGTERM (`stop.StopSignals`) and any error raised
during a step save the last completed step first (`_rescue`), so `resume=True` continues it
exactly. The pieces live beside it: `optim` (AdamW and the LR warm-up), `batches` (data order and
fingerprint), `parts` (on a CPU, each micro-batch in two parts, a thread each, the same result
whatever the thread count), `state` (RNG and optimizer state), `log`, `preview` (sample grids).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ddim.config import RunConfig
from ddim.data import build_dataset
from ddim.device import adjust_threads, resolve_device
from ddim.distributed import init_from_env, is_distributed, is_main_process, rank, world_size
from ddim.errors import BadFile, BadValue, DdimError, NonFinite, PathError, Stopped, from_os_error
from ddim.images import save_grid
from ddim.models import UNet
from ddim.models.compile import compile_model
from ddim.noise import seed_for
from ddim.objectives import diffusion_loss
from ddim.training.batches import Batches, check_dataset, fingerprint
from ddim.training.checkpoint import (
    ALL_FILES,
    CHECKPOINTS,
    EMA,
    MODEL,
    clear_partial,
    find_checkpoint,
    list_checkpoints,
    load_weights,
    read_config,
    read_state,
    save_checkpoint,
    step_dir_name,
)
from ddim.training.ema import ema_decay_at, ema_update
from ddim.training.log import TrainLog
from ddim.training.optim import adamw, lr_at
from ddim.training.parts import backward_in_parts, parts_for
from ddim.training.preview import sample_images
from ddim.training.run_folder import RunFolder, check_writable
from ddim.training.state import capture, restore
from ddim.training.stop import StopSignals

# keys of the independent random streams derived from the run's seed
_DATA_ORDER, _NOISE, _AUGMENT = 1, 2, 3


def _finite(*modules: nn.Module) -> bool:
    tensors = [t for m in modules for t in m.state_dict().values() if t.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def train(
    run: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    dataset: Dataset | None = None,
    compile: bool = False,
) -> Path:
    """Train `run` and write its logs, sample grids and checkpoints under `out_dir`; return the
    newest checkpoint folder. `dataset` (any Dataset under ddim.data's contract) replaces
    `run.data`. With `resume`, continue from the newest intact checkpoint in `out_dir` (its model
    and diffusion config and its data must match; `train.steps` may be raised to train longer);
    without it, `out_dir` must hold no checkpoints. Seeds torch's global RNG with `train.seed`.
    `compile` torch.compiles the UNet (`ddim.models.compile`). Raises `ddim.errors.Stopped`
    after saving on SIGINT/SIGTERM, and any error raised during a step after saving the last
    completed step (its message then says where)."""
    out_dir = Path(out_dir)
    device = init_from_env(resolve_device(run.train.device))
    with contextlib.ExitStack() as stack:
        if is_main_process():  # one writer per run folder, checked writable before the work
            continuing = resume and bool(list_checkpoints(out_dir / CHECKPOINTS))
            stack.enter_context(RunFolder(out_dir, fresh=not continuing))
        try:
            return _train(run, out_dir, device, resume, progress, dataset, compile)
        except OSError as e:
            error = from_os_error(e)
            if error is None:
                raise
            raise error from e


def _train(
    run: RunConfig,
    out_dir: Path,
    device: torch.device,
    resume: bool,
    progress: bool,
    dataset: Dataset | None,
    compile_net: bool,
) -> Path:
    cfg, main, rank_world = run.train, is_main_process(), (rank(), world_size())
    ckpt_root = out_dir / CHECKPOINTS
    if main:  # every output folder writable now, not after the first steps
        for folder in (ckpt_root, out_dir / "samples") if cfg.sample_every else (ckpt_root,):
            check_writable(folder)
        clear_partial(ckpt_root)  # what a killed process left hidden
    existing = list_checkpoints(ckpt_root)
    if existing and not resume:
        raise BadValue(
            f"{ckpt_root} already holds checkpoints (newest {existing[-1].name}); pass resume=True to "
            "continue that run, or choose another output folder"
        )
    dataset = build_dataset(run.data) if dataset is None else dataset
    shape = check_dataset(dataset, run)
    data_print = fingerprint(dataset)
    schedule = run.diffusion.make_schedule()

    torch.manual_seed(cfg.seed)
    model = UNet(run.model)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    data_gen = torch.Generator().manual_seed(seed_for(cfg.seed, _AUGMENT))
    noise_gen = torch.Generator(device).manual_seed(seed_for(cfg.seed, _NOISE))
    step, position, last_saved, state = 0, 0, None, None
    if resume and existing:
        last_saved = find_checkpoint(out_dir, ALL_FILES)
        saved, step = read_config(last_saved)
        if (saved.model, saved.diffusion) != (run.model, run.diffusion):
            raise BadValue(
                f"{last_saved} was trained with another model or diffusion config; resume with the "
                "config saved in its config.json, or start a new run in another folder"
            )
        state = read_state(last_saved, step)
        if state.get("data") is not None and state["data"] != data_print:
            old = state["data"]
            raise BadFile(
                f"the data {run.data.dataset} ({data_print['count']} images of shape {data_print['shape']}) "
                f"is not what {last_saved} was trained on ({old['count']} of shape {old['shape']}, another "
                "hash); resume with the original data, or start a new run in another folder"
            )
        load_weights(last_saved / MODEL, model)
        load_weights(last_saved / EMA, ema)
        position = state["data_position"]
    model.to(device).train()
    ema.to(device)
    optimizer = adamw(model.parameters(), cfg.lr, cfg.weight_decay, device)
    if state is not None:
        restore(state, last_saved / "state.pt", optimizer, data_gen, noise_gen)
    batches = Batches(dataset, seed_for(cfg.seed, _DATA_ORDER), cfg.micro_batch, position, cfg.num_workers)
    params, ema_tensors = list(model.state_dict().values()), list(ema.state_dict().values())
    net = model
    if is_distributed():  # gradients are averaged over the processes (DDP all-reduce)
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = compile_model(net, compile_net)  # --compile
    trained = list(model.parameters())
    whole = net is not model or compile_net or run.model.dropout > 0  # see ddim.training.parts

    def micro_loss(x0: Tensor, kwargs: dict | None, parts: int, part: int, gen: torch.Generator) -> Tensor:
        """The mean loss of the part-th of `parts` shares of the micro-batch x0, over parts and
        grad_accum; its randomness is that share's of the whole global batch."""
        share = slice(part * len(x0) // parts, (part + 1) * len(x0) // parts)
        r, k = rank_world
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = diffusion_loss(
                forward,
                x0[share],
                schedule,
                prediction=run.diffusion.prediction,
                weighting=cfg.weighting,
                min_snr_gamma=cfg.min_snr_gamma,
                offset_noise=cfg.offset_noise,
                self_condition=run.model.self_condition,
                generator=gen,
                model_kwargs=None if kwargs is None else {"y": kwargs["y"][share]},
                rank_world=(r * parts + part, k * parts),
            )
        return loss.mean() / (parts * cfg.grad_accum)

    num_classes = run.model.num_classes
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")

    def save(completed: dict) -> Path:
        """Checkpoint the state `completed` (the model, EMA and optimizer must be at its step)."""
        if not _finite(model, ema):
            raise NonFinite(
                f"the weights became non-finite by step {completed['step']}, so they were not saved; "
                "lower --lr or raise --warmup-steps and resume from the newest checkpoint"
            )
        state = {**completed, "optimizer": optimizer.state_dict(), "data": data_print}
        return save_checkpoint(
            ckpt_root, completed["step"], run, model.state_dict(), ema.state_dict(), state, cfg.keep_last
        )

    completed = capture(step, batches.position, data_gen, noise_gen)  # the last completed step's state
    consistent = True  # False only inside the optimizer and EMA updates
    stop = StopSignals()
    log = TrainLog(out_dir, step) if main else None
    bar = tqdm(
        total=cfg.steps, initial=step, disable=not (progress and main), unit="step", dynamic_ncols=True
    )
    try:
        with stop:
            while step < cfg.steps:
                lr = lr_at(step, cfg.lr, cfg.warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                step_loss = 0.0
                parts = parts_for(device, cfg.micro_batch, whole)  # the CPU cores share it (.parts)
                for micro in range(cfg.grad_accum):
                    x0, labels = batches.next(data_gen)
                    kwargs = None
                    if num_classes is not None:  # classifier-free guidance training (Ho & Salimans 2022)
                        n, (r, k) = len(labels), rank_world
                        drop = torch.rand(n * k, generator=data_gen)[r * n : (r + 1) * n] < cfg.label_dropout
                        kwargs = {"y": torch.where(drop, num_classes, labels).to(device)}
                    loss_of = functools.partial(micro_loss, x0.to(device, non_blocking=True), kwargs, parts)
                    last = micro == cfg.grad_accum - 1
                    sync = net.no_sync() if net is not model and not last else contextlib.nullcontext()
                    with sync:
                        step_loss = step_loss + backward_in_parts(loss_of, parts, noise_gen, trained)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                # one sync a step: a non-finite loss or gradient, or a stop signal on any process
                flags = torch.stack([~torch.isfinite(step_loss), ~torch.isfinite(grad_norm)]).float()
                flags = torch.cat([flags, torch.tensor([float(stop.requested)], device=flags.device)])
                if is_distributed():
                    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                bad_loss, bad_grad, stopping = flags.tolist()
                if stopping:
                    break  # this step is dropped; `completed` is the state to save
                if bad_loss or bad_grad:
                    raise NonFinite(
                        f"the {'loss' if bad_loss else 'gradient norm'} at step {step + 1} is not finite "
                        f"(loss {float(step_loss):.4g}, grad norm {float(grad_norm):.4g}): it diverged; "
                        "lower --lr, raise --warmup-steps or check the data"
                    )
                consistent = False
                optimizer.step()
                decay = ema_decay_at(step, cfg.ema_decay, cfg.ema_warmup)
                ema_update(ema_tensors, params, decay)
                step += 1
                completed, consistent = capture(step, batches.position, data_gen, noise_gen), True
                bar.update(1)
                adjust_threads()  # follow the machine's load (ddim.device)
                if not main:
                    continue
                paused_at = time.perf_counter()
                # the checkpoint first: whatever fails after it cannot lose this step
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
                    last_saved = save(completed)
                log.add(step_loss, cfg.batch_size)
                if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps):
                    row = log.write(step, lr=lr, grad_norm=float(grad_norm), ema_decay=decay)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.0f}")
                if cfg.sample_every and (step % cfg.sample_every == 0 or step == cfg.steps):
                    images = sample_images(ema, run, shape, device)
                    save_grid(images, out_dir / "samples" / f"{step_dir_name(step)}.png")
                log.paused += time.perf_counter() - paused_at
        if stop.requested:
            note = _rescue(main, consistent, completed, last_saved, save)
            if is_distributed():
                dist.barrier()  # the other ranks wait for rank 0's checkpoint
            raise Stopped(f"stopped by {stop.name}: {note}; continue with --resume", stop.signum)
    except Stopped:
        raise
    except BaseException as e:
        note = _rescue(main, consistent, completed, last_saved, save)
        if stop.requested:  # what the signal caused (a second Ctrl-C, DataLoader workers it ended)
            raise Stopped(f"stopped by {stop.name}: {note}; continue with --resume", stop.signum) from None
        if isinstance(e, KeyboardInterrupt):
            raise Stopped(f"interrupted: {note}; continue with --resume", signal.SIGINT) from None
        if isinstance(e, OSError) and from_os_error(e) is not None:
            raise PathError(f"{from_os_error(e)}; {note}") from e
        if isinstance(e, DdimError):
            e.args = (f"{e}; {note}",)
        elif isinstance(e, Exception):
            e.add_note(f"ddim: {note}")
        raise
    finally:
        bar.close()
        if log is not None:
            log.close()
    if is_distributed():
        dist.barrier()  # the other ranks wait for rank 0's last checkpoint
    return last_saved if main else ckpt_root / step_dir_name(step)


def _rescue(main: bool, consistent: bool, completed: dict, last_saved: Path | None, save) -> str:
    """Save the last completed step unless it is saved already; say where it is, in a few words."""
    step = completed["step"]
    newest = f"newest checkpoint: {last_saved}" if last_saved is not None else "no checkpoint was written"
    if not main:
        return "rank 0 saves the run's checkpoints"
    if last_saved is not None and last_saved.name == step_dir_name(step):
        return f"step {step} is saved in {last_saved}"
    if not consistent or step == 0:
        return newest
    try:
        return f"saved step {step} in {save(completed)}"
    except BaseException as e:  # a failing save must not hide the first error
        reason = from_os_error(e) if isinstance(e, OSError) else None
        return f"could not save step {step} ({reason or e}); {newest}"
