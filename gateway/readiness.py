"""What the process still waits for before /readyz may say ready, beyond the store and the broker.

Start-up work outside the gateway (e.g. `percept serve` deploying the demo models) registers itself here
before the port opens, and says when it is done; until then /readyz answers 503 naming it.
"""

from __future__ import annotations


class Readiness:
    def __init__(self) -> None:
        self._waiting: dict[str, str] = {}

    def wait_for(self, name: str, reason: str) -> None:
        """Not ready until `done(name)`; `reason` says why, and may be updated (e.g. with a failure)."""
        self._waiting[name] = reason

    def done(self, name: str) -> None:
        self._waiting.pop(name, None)

    def waiting(self) -> dict[str, str]:
        return dict(self._waiting)
