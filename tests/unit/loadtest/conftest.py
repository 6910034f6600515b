"""loadtest/ is a directory of scripts, not a package: its modules import each other by name."""

import sys
from pathlib import Path

LOADTEST = str(Path(__file__).resolve().parents[3] / "loadtest")
if LOADTEST not in sys.path:
    sys.path.insert(0, LOADTEST)
