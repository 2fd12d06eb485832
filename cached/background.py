"""A background pass repeated on a timer: the shape of the evictor and the compactor.

A failing pass is logged and tried again at the next tick, so a transient
error (a busy pack, a full disk for a moment) never stops the housekeeping.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    def __init__(self, name: str, interval: float, step: Callable[[], object]) -> None:
        self._name = name
        self._interval = interval
        self._step = step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def stopping(self) -> bool:
        """True once close() began: a long pass should end early."""
        return self._stop.is_set()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._step()
            except Exception:  # retried on the next tick
                log.exception("background %s pass failed", self._name)
