"""A gateway app under test: the example policies, its public URL, and signed posts to it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support.twilio import signed_form

POLICIES = Path(__file__).resolve().parents[2] / "policies"
PUBLIC = "http://gw.test"
Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


async def post(client: Client, path: str, params: dict[str, str], token: str, **headers: str) -> tuple[int, str]:
    """A form webhook signed (by twilio's RequestValidator) for PUBLIC + path; status and text."""
    head, body = signed_form(token, PUBLIC + path, params)
    response = await client.post(path, data=body, headers={**head, **headers})
    return response.status, await response.text()
