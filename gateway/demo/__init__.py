"""The switchyard DEMO runtime: stand-ins for what sits behind the gateway, so that the example
policies answer on a laptop with no account and no network. Not for production.

`python3 dev.py serve` starts it on 127.0.0.1:8090 beside the gateway (`python -m gateway.demo`
runs it alone). It is one small aiohttp app:
  - `POST /<tenant>/voice|sms`: a tenant's own runtime, the target of `upstream` routes. It checks
    the X-Twilio-Signature the gateway signed anew, with twilio's own RequestValidator, as a real
    runtime would (runtime.py);
  - `GET /<tenant>/stream`: a tenant's Media Streams agent, the target of bridged `stream`
    routes: a WebSocket behind the same signature check that echoes the caller's audio back,
    with a mark each second (agent.py);
  - `POST /v1/chat/completions`: an OpenAI-compatible model, the target of `llm` routes, that
    answers a canned line from the caller's words (chat.py);
  - `GET /healthz`.
It stops by itself when the gateway does (process.py).
The gateway does not import this package: it is a separate process, reached over HTTP only.
"""
