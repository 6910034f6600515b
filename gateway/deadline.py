"""A Deadline: what is left of Twilio's time budget, turned into a timeout for each I/O step."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.clock import Clock

# Twilio waits 15 s in all for a webhook's answer by default (a `#tt=` fragment on the webhook
# URL can change it, and that fragment never reaches us). After that it logs error 11200 and
# plays its own message, so our fallback must be on the wire before then.
TWILIO_TOTAL = 15.0
# Time kept back from every I/O step to write the fallback TwiML and cross the network.
ANSWER_MARGIN = 0.5


class DeadlineExceeded(Exception):
    """Nothing is left of the budget for another I/O step."""


@dataclass(frozen=True, slots=True)
class Deadline:
    """An absolute point on `clock` by which the request must be answered."""

    at: float
    clock: Clock

    @classmethod
    def after(cls, seconds: float, clock: Clock, start: float | None = None) -> Deadline:
        """`seconds` after `start` (default: now)."""
        return cls((clock() if start is None else start) + seconds, clock)

    def remaining(self) -> float:
        """Seconds left; negative once passed."""
        return self.at - self.clock()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def timeout(self, cap: float | None = None, margin: float = ANSWER_MARGIN) -> float:
        """The timeout for the next I/O step: what is left less `margin`, at most `cap`.

        Raises DeadlineExceeded when nothing is left, so a step is never started without time
        to finish it and still answer.
        """
        left = self.remaining() - margin
        if cap is not None and cap < left:
            left = cap
        if left <= 0:
            raise DeadlineExceeded(f"deadline passed {-left:.3f}s ago (margin {margin:.3f}s)")
        return left
