"""A clock tests can stop and move: inject it where the code takes ``clock=``."""

from __future__ import annotations

import time


class FrozenClock:
    def __init__(self, now: float | None = None) -> None:
        self.now = float(int(time.time()) if now is None else now)

    def __call__(self) -> float:
        return self.now

    def set(self, now: float) -> None:
        self.now = float(now)

    def advance(self, seconds: float) -> None:
        self.now += seconds
