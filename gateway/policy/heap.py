"""The garbage collector kept away from the policy set: paused while a set is built, then the
set frozen out of its sight.

Measured at 10,000-30,000 tenants (docs/benchmarks.md): every full collection walks every
tracked object, and a loaded set is millions of them. During a load the collector ran full
passes over the set being built (15-20 % of the start-up; on a reload thread, holding the GIL:
a 135-430 ms stall of the event loop); after it, a full pass every so often walked the set
again for objects that live until the next reload (12-18 ms idle stalls at 10,000).

Tenants hold no reference cycles (tests/unit/policy/test_heap.py checks it), so a replaced set
is freed by reference counting, frozen or not. A freeze also takes whatever else is alive at
that moment: requests in flight, whose objects may die in a cycle later and are then never
collected. So the set is frozen at start-up (before the first request) and after a reload
only when that reload compiled many files (watch.FREEZE_MIN: a deploy, a ConfigMap replaced
whole), where leaving hundreds of thousands of new objects to the collector would stall the
loop at its next passes; a few in-flight requests' cycles per such reload is the price.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator
from dataclasses import dataclass

_lock = threading.Lock()
_depth = [0]  # loads under way (a start-up check and a reload may nest in tests)
_was_enabled = [True]


@dataclass
class Pause:
    """Whether the block's end freezes what is alive (the caller decides once it knows what
    it built); a block left by an exception freezes nothing."""

    freeze: bool = True


@contextlib.contextmanager
def paused(*, freeze: bool = True) -> Iterator[Pause]:
    """No automatic collection until the block ends; then, if `pause.freeze`, everything alive
    is frozen (the new set with it), and collection resumes as it was. Safe from any thread,
    nested or not."""
    pause = Pause(freeze)
    with _lock:
        if _depth[0] == 0:
            _was_enabled[0] = gc.isenabled()
            gc.disable()
        _depth[0] += 1
    try:
        yield pause
    except BaseException:
        pause.freeze = False  # a crashed or cancelled build: nothing worth keeping frozen
        raise
    finally:
        with _lock:
            _depth[0] -= 1
            if pause.freeze:
                gc.freeze()
            if _depth[0] == 0 and _was_enabled[0]:
                gc.enable()
