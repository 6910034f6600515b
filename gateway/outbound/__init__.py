"""Calls and messages placed for tenants through Twilio's REST API (the outbound API)."""
