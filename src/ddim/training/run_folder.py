"""A run folder and its one writer.

`train` writes a marker file, `ddim-run.json`, into every run folder it creates (or finds empty),
so that a command may later recognise a folder as a ddim run and delete only such a folder's own
outputs (`remove_run`, which checks every entry, inside the subfolders too, before it deletes
anything). While a process trains into a folder it holds an OS-level lock,
`fcntl.flock` on `.ddim-lock` in the folder: a second writer is refused with `RunBusy`. The OS
releases the lock when the process exits in any way (kill -9 included), so a lock is never
stale: a `.ddim-lock` file that nobody holds locked is stale by definition and is simply reused
(its text, the pid and host of the last writer, is only shown in the message)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from ddim.errors import BadFile, RunBusy, from_os_error
from ddim.training.checkpoint import ALL_FILES, CHECKPOINTS
from ddim.tuning import TUNED_FILE

MARKER, LOCK = "ddim-run.json", ".ddim-lock"
# everything ddim writes into a run folder (`train`, and `ddim tune`'s grids); `remove_run` deletes
# these and nothing else
OUTPUTS = (MARKER, LOCK, CHECKPOINTS, "samples", "tensorboard", "log.csv", ".log.csv.tmp", TUNED_FILE)
# what `train` writes inside those subfolders: checkpoint folders (with ALL_FILES; partial ones of a
# killed process, damaged ones moved aside: training/checkpoint.py), sample grids, TensorBoard events
CHECKPOINT_DIR = re.compile(r"(\.tmp-)?step-\d+(\.damaged)?")
WRITTEN_INSIDE = {
    "samples": re.compile(r"step-\d+\.png"),
    "tensorboard": re.compile(r"events\.out\.tfevents\..+"),
}


def is_run(folder: Path) -> bool:
    """Whether `folder` holds the marker that `train` writes."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(marker, dict) and marker.get("format") == "ddim-run"


def check_writable(folder: Path) -> None:
    """Create `folder` if needed and write a scratch file in it, so that a full disk, a read-only
    folder or a path under a file is reported now, before the work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        error = from_os_error(e, folder)
        if error is None:
            raise
        raise error from None


class RunFolder:
    """A context manager: the run folder `path`, created and checked writable, locked for this
    process, and marked as a ddim run when new. `fresh`: the caller starts a new run, so a
    folder holding another program's log.csv, samples or checkpoints is refused."""

    def __init__(self, path: str | os.PathLike, *, fresh: bool):
        self.path, self.fresh, self.fd = Path(path), fresh, None

    def __enter__(self) -> RunFolder:
        path = self.path
        check_writable(path)
        lock = path / LOCK
        try:
            self.fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise (from_os_error(e, lock) or e) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            self.fd = None
            raise RunBusy(
                f"{path} is being trained by {holder} (it holds {lock}); wait for it to finish, stop "
                "it, or choose another --out"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        if not is_run(path):
            foreign = sorted(p.name for p in path.iterdir() if p.name in OUTPUTS and p.name != LOCK)
            if foreign and self.fresh:
                self.__exit__()
                raise BadFile(
                    f"{path} holds {', '.join(foreign)} that ddim's training did not write (no "
                    f"{MARKER}); choose an empty or new --out so that nothing of yours is overwritten"
                )
            (path / MARKER).write_text(json.dumps({"format": "ddim-run", "version": 1}) + "\n")
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _plain_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def foreign_entries(folder: Path) -> list[str]:
    """The entries of run folder `folder` that ddim does not write, as paths relative to it: at
    its top level (not in OUTPUTS) and inside its checkpoints, samples and tensorboard folders."""
    foreign = [p.name for p in folder.iterdir() if p.name not in OUTPUTS]
    for name in (CHECKPOINTS, *WRITTEN_INSIDE):
        sub = folder / name
        if not sub.is_dir() or sub.is_symlink():  # a file or a link: removed as such, nothing inside
            continue
        for p in sub.iterdir():
            if name == CHECKPOINTS and p.is_dir() and not p.is_symlink() and CHECKPOINT_DIR.fullmatch(p.name):
                kept = [f.name for f in p.iterdir() if not (_plain_file(f) and f.name in ALL_FILES)]
                foreign += [f"{name}/{p.name}/{f}" for f in kept]
            elif name == CHECKPOINTS or not (_plain_file(p) and WRITTEN_INSIDE[name].fullmatch(p.name)):
                foreign.append(f"{name}/{p.name}")
    return sorted(foreign)


def remove_run(folder: Path) -> None:
    """Delete a run folder that `train` wrote, refusing (BadFile) a folder without its marker or
    holding anything ddim does not write (`foreign_entries`, all checked before anything is
    deleted), and a folder another process is training (RunBusy)."""
    if not folder.exists():
        return
    if not is_run(folder):
        raise BadFile(
            f"{folder} exists but is not a ddim run folder (no {MARKER}); move it away or choose "
            "another --out: ddim deletes only what it wrote"
        )
    foreign = foreign_entries(folder)
    if foreign:
        more = f" (and {len(foreign) - 3} more)" if len(foreign) > 3 else ""
        raise BadFile(
            f"{folder} holds {', '.join(foreign[:3])}{more}, which ddim did not write; move it away or "
            "choose another --out: ddim deletes only what it wrote"
        )
    with RunFolder(folder, fresh=False):  # refuses a folder another process is training
        for name in OUTPUTS:
            target = folder / name
            if name != LOCK and target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif name != LOCK and (target.is_file() or target.is_symlink()):
                target.unlink()
    (folder / LOCK).unlink(missing_ok=True)
    folder.rmdir()
