"""A router's background chore: `tick()` now, then every `every_s`, on a daemon thread, until
`stop()`. A failing tick is logged once per distinct error (not every period) and the next one
runs as usual, so a store hiccup neither kills the thread nor floods the log."""
from __future__ import annotations

import logging
import threading

log = logging.getLogger("thawline.serve")


class Periodic:
    name = "thawline-periodic"
    every_s = 10.0

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def tick(self) -> None:
        raise NotImplementedError

    def failed(self, error: Exception) -> str:
        """The warning logged for a failed tick."""
        return f"{self.name} failed: {error}"

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        last_error = None
        while not self._stop.is_set():
            try:
                self.tick()
                last_error = None
            except Exception as e:  # noqa: BLE001 - logged once per distinct error; the next tick retries
                if str(e) != last_error:
                    log.warning("thawline: %s", self.failed(e))
                last_error = str(e)
            self._stop.wait(self.every_s)
