"""The action registry: the ONE place that knows every kind of action.

A route names exactly one action by its key (`say:`, `stream:`, …). Adding an action is one
module (its schema and compiler, an ActionKind), plus one line below: the policy schema
(policy/model.py) and the loader take every action from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.actions import llm, static, stream, upstream
from gateway.actions.base import ActionKind, CallOut, CompileContext, Compiled, Incoming, Tools

ACTIONS: Mapping[str, ActionKind[Any]] = {
    kind.name: kind
    for kind in (
        static.SAY,
        static.REJECT,
        static.REDIRECT,
        stream.STREAM,
        static.MESSAGE,
        static.TWIML,
        upstream.UPSTREAM,
        llm.LLM,
    )
}

__all__ = ["ACTIONS", "ActionKind", "CallOut", "CompileContext", "Compiled", "Incoming", "Tools", "compile_action"]


def compile_action(name: str, value: object, context: CompileContext) -> Compiled:
    """Compile one route's action; ValueError carries the message for the policy's reader."""
    kind = ACTIONS.get(name)
    if kind is None:  # the schema only admits registered names: a bug if reached
        raise ValueError(f"unknown action {name!r}")
    return kind.compile(value, context)
