"""The garbage collector kept away from the policy set: paused while a set is built, then the
set frozen out of its sight.

Measured at 10,000-30,000 tenants (docs/benchmarks.md): every full collection walks every
tracked object, and a loaded set is millions of them. During a load the collector ran full
passes over the set being built (15-20 % of the start-up; on a reload thread, holding the GIL:
a 135-430 ms stall of the event loop); after it, a full pass every so often walked the set
again for objects that live until the next reload (12-18 ms idle stalls at 10,000).

Tenants hold no reference cycles (tests/unit/policy/test_heap.py checks it), so a replaced set
is freed by reference counting, frozen or not; a freeze keeps only cyclic garbage made
elsewhere while a load ran (kilobytes of a request or two, against seconds of stalls).
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
    """Set `freeze` False when the block built nothing to keep (a reload that found no change):
    then nothing is frozen, and the young garbage of the moment stays collectable."""

    freeze: bool = True


@contextlib.contextmanager
def paused() -> Iterator[Pause]:
    """No automatic collection until the block ends; then everything alive is frozen (the new
    set with it) and collection resumes as it was. Safe from any thread, nested or not."""
    pause = Pause()
    with _lock:
        if _depth[0] == 0:
            _was_enabled[0] = gc.isenabled()
            gc.disable()
        _depth[0] += 1
    try:
        yield pause
    finally:
        with _lock:
            _depth[0] -= 1
            if pause.freeze:
                gc.freeze()
            if _depth[0] == 0 and _was_enabled[0]:
                gc.enable()
