"""Every web.AppKey and web.RequestKey in one place."""

from __future__ import annotations

from aiohttp import web

from gateway.egress import Egress
from gateway.exchange import Exchange
from gateway.lifecycle import Lifecycle
from gateway.limits.factory import Stores
from gateway.services import Services

SERVICES = web.AppKey("services", Services)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
EGRESS = web.AppKey("egress", Egress)
STORES = web.AppKey("stores", Stores)  # the limit stores the app opened (tests reach the heartbeat)
EXCHANGE = web.RequestKey("exchange", Exchange)
