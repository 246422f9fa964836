"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (preemption, `kill`).

`StopSignals` installs handlers that only note the signal; the loop looks at `requested` once per
step and then saves the last completed step and raises `ddim.errors.Stopped` (exit status 130 or
143), so no step is ever cut in half. A second signal does not wait: it raises KeyboardInterrupt
at once. Handlers can be installed only in the main thread; elsewhere signals keep their
default behaviour."""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:  # the second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
