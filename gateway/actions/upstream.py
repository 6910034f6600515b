"""The `upstream` action: the webhook forwarded to the tenant's own runtime, its TwiML answered.

The URL is the policy's, never the request's. The body goes on unchanged with Twilio's own
headers, and is signed anew for the upstream URL with the tenant's auth token, so a runtime that
checks `X-Twilio-Signature` with twilio's RequestValidator works behind the gateway unchanged.
Anything but TwiML in time (a 4xx/5xx, not a well-formed <Response> document by twiml.check,
too big, too slow, no connection, a breaker open) raises UpstreamError, and the handler answers
the route's fallback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit

from pydantic import Field

from gateway.actions.base import ActionKind, CompileContext, Compiled, Incoming, Tools
from gateway.actions.static import BOTH
from gateway.auth.twilio_signature import SIGNATURE, sign_for
from gateway.errors import UpstreamError
from gateway.hop import Answer, Target, request_head
from gateway.limits.breaker import CircuitBreaker
from gateway.policy.base import Strict
from gateway.protocol import twiml
from gateway.protocol.tracecontext import new_span_id, traceparent

if TYPE_CHECKING:
    from gateway.deadline import Deadline
    from gateway.exchange import Exchange

DEFAULT_TIMEOUT_MS = 5000
# A TwiML document is a few KB; a runtime answering more is broken, and Twilio caps TwiML at 64 KB.
MAX_TWIML = 64 * 1024
TENANT_HEADER = "X-Switchyard-Tenant"


class Breaker(Strict):
    failures: Annotated[int, Field(ge=1, le=1000, strict=True)] = 5
    cooldown_ms: Annotated[int, Field(ge=100, le=600_000, strict=True)] = 10_000


class Upstream(Strict):
    url: Annotated[str, Field(pattern=r"^https?://[^\s#]+$")]
    # The route's own time; never more than what is left of Twilio's (twilio.webhook_timeout_ms,
    # 15 s by default) less the answer margin.
    timeout_ms: Annotated[int, Field(ge=50, le=15_000, strict=True)] = DEFAULT_TIMEOUT_MS
    breaker: Breaker = Field(default_factory=Breaker)


@dataclass(slots=True)
class UpstreamCall:
    """A compiled `upstream` action (the CallOut protocol)."""

    tenant: str
    url: str
    timeout: float
    key: bytes = field(repr=False)
    breaker: CircuitBreaker
    target: str
    hop: Target  # the URL, parsed once

    async def run(self, exchange: Exchange, incoming: Incoming, deadline: Deadline, tools: Tools) -> bytes:
        if not self.breaker.allow():
            # Failing lately: the caller hears the fallback now, not after another timeout.
            raise UpstreamError(self.target, "circuit_open")
        span_id = new_span_id()  # our client span: the runtime's spans are its children
        url, headers = self.request(exchange, incoming, span_id)
        body = incoming.body
        # The signed URL less the policy's own is what the request line's path gains (bodySHA256).
        head = request_head("POST", self.hop, self.hop.path + url[len(self.url) :], headers.items(), len(body))
        clock = exchange.clock
        started = clock()
        took: float | None = None  # the hop alone: the check after it is not the runtime's time
        failure: str | None = None
        try:
            answer = await tools.egress.forward(
                self.hop, head, body, name=self.target, deadline=deadline, cap=self.timeout, max_body=MAX_TWIML
            )
            took = clock() - started
            return self._twiml(answer)
        except UpstreamError as error:
            if took is None:  # no answer at all (a status or a bad document counts in _twiml)
                self.breaker.record_failure()
            failure = error.reason
            raise
        except BaseException as error:  # cancelled by the request's deadline, or a bug
            failure = type(error).__name__
            raise
        finally:
            # The step's span says why it failed (error.type: not_twiml, status, timeout …); the
            # handler's log line has the error's detail too.
            exchange.timed(
                "upstream", clock() - started if took is None else took, started, span_id,
                None if failure is None else {"error.type": failure},
            )  # fmt: skip

    def _twiml(self, answer: Answer) -> bytes:
        """The runtime's answer if it is TwiML Twilio can read, else UpstreamError saying why
        (never with the answer's text: it may carry what a caller said)."""
        if answer.status >= 400:
            self.breaker.record_failure()
            raise UpstreamError(self.target, "status", answer.status)
        self.breaker.record_success()  # it answered: its TwiML is the tenant's business
        try:
            twiml.check(answer.body)
        except twiml.NotTwiml as problem:
            # Twilio would answer 12100 and the caller hear "an application error has occurred";
            # the route's fallback is better.
            raise UpstreamError(self.target, "not_twiml", answer.status, str(problem)) from None
        return answer.body

    def request(self, exchange: Exchange, incoming: Incoming, span_id: bytes) -> tuple[str, dict[str, str]]:
        """The URL and headers the forwarded request goes with (also what `explain` shows)."""
        url = self.url
        headers = dict(incoming.headers)  # Twilio's own (I-Twilio-Idempotency-Token …), chosen by the handler
        headers.pop("traceparent", None)
        headers.pop("tracestate", None)
        headers["Content-Type"] = incoming.content_type or "application/x-www-form-urlencoded"
        headers[TENANT_HEADER] = self.tenant
        url, headers[SIGNATURE] = sign_for(url, incoming.params, incoming.body, incoming.content_type, self.key)
        trace_id, sampled = exchange.trace()
        headers["traceparent"] = traceparent(trace_id, span_id, sampled)
        return url, headers


def _compile(value: Upstream, context: CompileContext) -> Compiled:
    if context.signing_key is None:
        raise ValueError("the tenant's auth token is needed to sign forwarded requests")
    breaker = CircuitBreaker(failures=value.breaker.failures, cooldown=value.breaker.cooldown_ms / 1000)
    host = urlsplit(value.url).netloc
    call = UpstreamCall(
        tenant=context.tenant_id,
        url=value.url,
        timeout=value.timeout_ms / 1000,
        key=context.signing_key,
        breaker=breaker,
        target=f"upstream {context.tenant_id} {host}",
        hop=Target.parse(value.url),
    )
    return Compiled(call=call)


UPSTREAM = ActionKind("upstream", Upstream, BOTH, _compile)
