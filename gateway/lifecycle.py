"""The process's serving state as handlers see it (/readyz), set by the server's drain."""

from __future__ import annotations


class Lifecycle:
    """/readyz answers 503 once `draining` is set (gateway/server.py sets it at SIGTERM)."""

    __slots__ = ("draining",)

    def __init__(self) -> None:
        self.draining = False
