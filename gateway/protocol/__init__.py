"""Pure Twilio wire formats: no aiohttp, no I/O (form bodies, TwiML)."""
