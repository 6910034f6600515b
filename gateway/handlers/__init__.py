"""Thin aiohttp handlers: Twilio webhooks, the JSON API, health."""
