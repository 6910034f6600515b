"""Every web.AppKey and web.RequestKey in one place."""

from __future__ import annotations

from aiohttp import web

from gateway.logfields import LogFields
from gateway.services import Services

SERVICES = web.AppKey("services", Services)
LOG = web.RequestKey("log", LogFields)
