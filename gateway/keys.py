"""Every web.AppKey and web.RequestKey in one place."""

from __future__ import annotations

from aiohttp import web

from gateway.exchange import Exchange
from gateway.services import Services

SERVICES = web.AppKey("services", Services)
EXCHANGE = web.RequestKey("exchange", Exchange)
