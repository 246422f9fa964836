"""The training log: log.csv (and TensorBoard when it imports), with the running means between
two lines. On resume the lines up to the resumed step are kept (a crashed run may have written
later ones) and the file is rewritten atomically; a partial last line, left by a process killed
while writing it, is dropped; damage anywhere else is refused with one line."""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

from torch import Tensor

from ddim.errors import BadFile, from_os_error

LOG_FIELDS = ("step", "loss", "lr", "grad_norm", "ema_decay", "images_per_s", "elapsed_s")
LOG = "log.csv"


def read_log(file: Path) -> list[dict[str, str]]:
    """The rows of a log.csv, checked: every field present and a number, steps increasing. A
    partial last row (a killed writer) is left out."""
    try:
        with file.open(newline="") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise BadFile(f"{file} is damaged ({e}); move it aside (a resumed run starts a new log)") from None
    if not rows or tuple(rows[0]) != LOG_FIELDS:
        raise BadFile(
            f"{file} does not start with the header {','.join(LOG_FIELDS)}; move it aside (a resumed "
            "run starts a new log)"
        )
    good, last_step = [], 0
    for number, row in enumerate(rows[1:], start=2):
        problem = _problem(row, last_step)
        if problem and number == len(rows):  # the last line only: a process killed mid-write
            break
        if problem:
            raise BadFile(f"{file} line {number} is damaged ({problem}); repair or delete that line")
        good.append(dict(zip(LOG_FIELDS, row, strict=True)))
        last_step = int(row[0])
    return good


def _problem(row: list[str], last_step: int) -> str | None:
    if len(row) != len(LOG_FIELDS):
        return f"{len(row)} fields instead of {len(LOG_FIELDS)}"
    try:
        step, values = int(row[0]), [float(v) for v in row[1:]]
    except ValueError:
        return "a field that is not a number"
    if step <= last_step:
        return f"step {step} after step {last_step}"
    if not all(math.isfinite(v) for v in values):
        return "a value that is not finite"
    return None


class TrainLog:
    """log.csv (and TensorBoard when it imports) plus the running means between two lines."""

    def __init__(self, out_dir: Path, start_step: int):
        self.file = out_dir / LOG
        rows = []
        if start_step > 0 and self.file.is_file():
            rows = [r for r in read_log(self.file) if int(r["step"]) <= start_step]
        tmp = self.file.with_name(f".{LOG}.tmp")
        try:
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, LOG_FIELDS)
                writer.writeheader()
                writer.writerows(rows)
            os.replace(tmp, self.file)  # the old log stays whole until the new one is written
        except OSError as e:  # named as the log, not as its temporary twin
            tmp.unlink(missing_ok=True)
            raise from_os_error(e, self.file) or e from None
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
