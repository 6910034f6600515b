"""One gateway worker: bind the port, serve, and on SIGTERM/SIGINT drain and exit.

cli.py decides how many workers run; this module runs one: an AppRunner and a TCPSite
(SO_REUSEPORT when several workers share the port), the signal handlers, the drain, the cleanup.

The drain, on the first SIGTERM or SIGINT:
  1. `/readyz` answers 503 `draining`, and the listening socket is closed: new connections are
     refused, so the load balancer and clients go to another instance;
  2. every request already accepted (its head parsed) is finished, even one whose body is still
     arriving, and a request that arrives on an open keep-alive connection is answered too; from
     now on each response says `Connection: close` and its connection closes after it;
  3. once every connection has closed, or nothing has been in flight for IDLE_LINGER (idle
     keep-alive connections are then closed), or when the grace period is over (unfinished
     requests are cut and counted at WARNING, idle connections closed), the app's clients are closed
     (cleanup_ctx), the access log flushed, and the process exits 0.
A second SIGTERM/SIGINT exits at once with EXIT_FORCED (1), cutting whatever is in flight.

A request whose head has not fully arrived when the drain ends (IDLE_LINGER after the last busy
moment, or the grace period) is not "accepted": its connection is closed with the idle ones.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web, web_response, web_server
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest

from gateway.app import close_streams, create_app
from gateway.keys import LIFECYCLE
from gateway.lifecycle import Lifecycle
from gateway.settings import Settings
from gateway.telemetry import accesslog
from gateway.telemetry.accesslog import configure_logging

log = logging.getLogger("switchyard")
# The `logger=` of aiohttp's server: its records come through HttpConnection.log_exception.
http_log = logging.getLogger("switchyard.http")

EXIT_DRAINED = 0
EXIT_FORCED = 1  # a second SIGTERM/SIGINT: the drain is cut short
EXIT_FAILED = 1  # could not listen
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SERVER_HEADER = "switchyard"
# What aiohttp's own shutdown gives each request left after the grace period: this long to
# finish, then as long again to unwind once cancelled. Not 0: aiohttp reads 0 as "no limit".
CUT_TIMEOUT = 0.25
# The drain wakes when a connection's task ends (it closed); it also looks again this often for
# a connection the loop registered after it looked (accepted just before the listener closed).
DRAIN_POLL = 0.1
# With nothing in flight, idle keep-alive connections are closed after this much quiet.
IDLE_LINGER = 2.0
# The parser's fixed text for too many header lines (http_parser.py and _http_parser.pyx).
TOO_MANY_HEADERS = "Too many headers received"
CLIENT_CLOSED = 499  # nginx's status for a client that left before its answer; the access log uses it too


def client_fault(exc: BaseException | None, *, client_gone: bool) -> int | None:
    """The status for an error the client caused (malformed bytes, a connection it dropped);
    None for anything else, which is our fault and keeps its traceback."""
    # Any oversized line of the request head, the request line included, is 431, as Go's
    # net/http answers for its whole head: the client must send a smaller head, not another URL.
    if isinstance(exc, LineTooLong) or (isinstance(exc, BadHttpMessage) and exc.message == TOO_MANY_HEADERS):
        return HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    if isinstance(exc, HttpProcessingError):
        return exc.code if 400 <= exc.code < 500 else HTTPStatus.BAD_REQUEST
    if isinstance(exc, RequestPayloadError):  # a body the parser refused (bad chunk, bad encoding)
        return HTTPStatus.BAD_REQUEST
    if isinstance(exc, ConnectionError) and client_gone:
        # Only when our client's own connection is gone: the same error from an upstream call,
        # with the client still there, is a fault of ours.
        return CLIENT_CLOSED
    return None


def reply_text(status: int) -> str:
    """The whole body of an error reply: fixed per status, nothing taken from the request."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Client Closed Request" if status == CLIENT_CLOSED else "Client Error"
    return f"{status} {phrase}\n"


class HttpConnection(RequestHandler):
    """aiohttp's HTTP/1 connection protocol with the two things it offers no hook for.

    Errors: a malformed request gets a fixed short reply and no traceback; aiohttp's reply is the
    parser's message, which quotes the request's bytes (the first 100 of an oversized header: a
    bearer token, say), and aiohttp logs it at ERROR with a traceback.

    Drain: RequestHandler.close() (what aiohttp's shutdown calls) stops reading at once, so a body
    still arriving is never complete and the request dies at the shutdown timeout;
    close_after_response() keeps reading and closes the connection after its next response.
    """

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        fault = client_fault(exc, client_gone=self._client_gone())
        if fault is None:
            return super().handle_error(request, status, exc, message)
        # The exception's text quotes the request: only its type is logged, and only at DEBUG,
        # since the access line already records the request and its status.
        self.logger.debug("%d for %s: %s", fault, request.remote, type(exc).__name__)
        if request.writer.output_size > 0:  # as aiohttp does: a started response cannot be replaced
            raise ConnectionError("response already started, cannot send an error reply")
        response = web.Response(status=fault, text=reply_text(fault))
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """aiohttp's tracebacks outside handle_error (a body read while lingering, a write) keep
        theirs only for faults of ours: a client's is one line at INFO, naming the exception's type."""
        exc = kwargs.get("exc_info")
        if isinstance(exc, BaseException) and client_fault(exc, client_gone=self._client_gone()) is not None:
            self.logger.info(f"{args[0] if args else 'client error'}: %s", *args[1:], type(exc).__name__)
            return
        super().log_exception(*args, **kwargs)

    def _client_gone(self) -> bool:
        transport = self.transport
        return transport is None or transport.is_closing()

    # The drain. aiohttp 3.14 internals read here: `_task_handler` (the connection's task),
    # `_waiter` (set while it waits for the next request), `_current_request` and
    # `_request_factory` (read once per request by RequestHandler.start()).

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task_handler

    @property
    def open(self) -> bool:
        """Serving: not closed, and its client still there (else no one is left to answer)."""
        task = self._task_handler
        return task is not None and not task.done()

    @property
    def busy(self) -> bool:
        """A request is being read, handled or answered (not waiting for the next request)."""
        waiter = self._waiter
        return self.open and (waiter is None or waiter.done())

    def close_after_response(self) -> None:
        """Answer the request in progress, and any that arrives later, with `Connection: close`:
        aiohttp closes a connection after a response that is not keep-alive."""
        request = self._current_request
        if request is not None:
            # Preset the reified `keep_alive` the response reads, as BaseRequest.clone() presets
            # its reified properties; a response already started keeps what it sent.
            request._cache["keep_alive"] = False
        factory = self._request_factory
        if factory is not None:

            def closing(message: RawRequestMessage, *args: Any) -> BaseRequest:
                return factory(message._replace(should_close=True), *args)

            self._request_factory = closing


def run(settings: Settings, app: web.Application | None = None) -> int:
    """Serve `app` (built here from `settings` when None) until SIGTERM/SIGINT, drain, and
    return the process's exit code."""
    stops: list[int] = []
    _early_signals(stops)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # uvloop is optional off Linux/macOS
        pass
    configure_logging()
    # settings.instance_id is this process's own: SWITCHYARD_INSTANCE_ID or host-pid, and with
    # --workers the supervisor's with the worker's number added (cli._supervise).
    if app is None:
        app = create_app(settings)
    _install_server_defaults()
    return asyncio.run(_serve(app, settings, stops))


def _early_signals(stops: list[int]) -> None:
    """Until the event loop takes over, a stop signal is remembered instead of killing the
    process. The supervisor starts workers with these signals blocked (the mask is inherited),
    so one sent during start-up waits here rather than killing a half-started worker."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda received, _frame: stops.append(received))
    # Policies are read at start-up anyway; the app installs its reload handler when it starts.
    signal.signal(signal.SIGHUP, lambda _received, _frame: None)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (*STOP_SIGNALS, signal.SIGHUP))


def _install_server_defaults() -> None:
    """Two aiohttp module globals, set once per process, so they cost nothing per request."""
    # StreamResponse sets `Server: <SERVER_SOFTWARE>` ("Python/3.11 aiohttp/3.14.5") on every
    # response from this name; versions tell an attacker which CVEs to try, and a per-response
    # hook (on_response_prepare) would cost a coroutine per request.
    setattr(web_response, "SERVER_SOFTWARE", SERVER_HEADER)  # noqa: B010 - not re-exported: mypy --strict
    # web.Server makes each connection's protocol by this module-global name; no argument does.
    setattr(web_server, "RequestHandler", HttpConnection)  # noqa: B010 - as above


async def _serve(app: web.Application, settings: Settings, stops: list[int]) -> int:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[int] = loop.create_future()
    accesslog.BUFFER.lines = settings.access_log
    runner = web.AppRunner(
        app,
        access_log_class=accesslog.JsonAccessLogger,
        # Always on: the hook also hands each ended request to the app's recorder (metrics,
        # spans, spend); --no-access-log only stops the lines (BUFFER.lines).
        access_log=logging.getLogger("switchyard.access"),
        logger=http_log,
        # aiohttp's own shutdown only cuts what our drain left (see _drain).
        shutdown_timeout=CUT_TIMEOUT,
        # handler_cancellation stays off (aiohttp's default): a webhook whose caller hung up
        # still finishes its bookkeeping and writes its access line (499).
    )

    def on_signal(signum: int) -> None:
        if not stop.done():
            stop.set_result(signum)
        else:
            _exit_now(signum, runner, accesslog.flush)

    for stop_signal in STOP_SIGNALS:
        loop.add_signal_handler(stop_signal, on_signal, stop_signal)
    for received in stops:  # during start-up
        on_signal(received)
    try:
        await runner.setup()  # the app's cleanup_ctx enters here (limit store, sessions)
        if not stop.done():
            site = web.TCPSite(runner, settings.host, settings.port, reuse_port=settings.workers > 1)
            try:
                await site.start()
            except OSError as exc:
                print(f"switchyard pid {os.getpid()}: cannot listen on {site.name}: {exc}", file=sys.stderr)
                return EXIT_FAILED
            print(f"switchyard pid {os.getpid()}: serving on {site.name}", file=sys.stderr)
            _freeze_startup_objects()
        await _drain(runner, app[LIFECYCLE], settings.grace_period, signal.Signals(await stop).name)
        await close_streams(app)
    finally:
        await runner.cleanup()  # closes idle connections, cuts what is left, then the app's cleanup_ctx
        accesslog.flush()
    log.info("pid %d stopped", os.getpid())
    return EXIT_DRAINED


def _freeze_startup_objects() -> None:
    """What start-up made (modules, policies, pydantic models, client sessions) lives as long as
    the process: moved out of the collector's sight, a full collection no longer walks it. The
    heap is ~10^5 objects, and requests' short-lived records trigger full collections about
    once a second under load: measured, they showed up as ~18 µs per request (charged to
    whatever allocated at that moment, parse_form mostly)."""
    gc.collect()
    gc.freeze()


async def _drain(runner: web.AppRunner, lifecycle: Lifecycle, grace: float, reason: str) -> int:
    """Refuse new connections and answer what comes on the open ones until each has closed (after
    its next response) or the grace period is over; how many requests were unfinished then."""
    loop = asyncio.get_running_loop()
    lifecycle.draining = True
    for site in list(runner.sites):
        await site.stop()  # closes the listening socket now: new connections are refused
    # Connections the loop accepted just before get their protocol (aiohttp's cleanup does this too).
    await asyncio.sleep(0)
    server = runner.server
    assert server is not None
    deadline = loop.time() + grace
    marked: set[HttpConnection] = set()
    remaining = _sweep(server, marked)
    log.info(
        "pid %d got %s: draining %d connection(s), %d busy, for up to %gs; /readyz answers 503",
        os.getpid(),
        reason,
        len(remaining),
        sum(c.busy for c in remaining),
        grace,
    )
    # An idle keep-alive connection stays open a while: a request already on its way (a load
    # balancer's, sent before it saw /readyz fail) is answered, not lost to a close racing it.
    # But only IDLE_LINGER past the last busy moment: a pool of silent keep-alive connections
    # (every load balancer keeps one) must not make each shutdown last the whole grace period.
    quiet_since: float | None = None
    while remaining and (left := deadline - loop.time()) > 0:
        if any(c.busy for c in remaining):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = loop.time()
        elif loop.time() - quiet_since >= IDLE_LINGER:
            break
        tasks = [task for c in remaining if (task := c.task) is not None]
        await asyncio.wait(tasks, timeout=min(left, DRAIN_POLL), return_when=asyncio.FIRST_COMPLETED)
        remaining = _sweep(server, marked)
    busy = [c for c in remaining if c.busy]
    if busy:
        log.warning("pid %d: grace period of %gs over, cutting %d unfinished request(s)", os.getpid(), grace, len(busy))
    return len(busy)


def _sweep(server: web.Server, marked: set[HttpConnection]) -> list[HttpConnection]:
    """The connections still open, each marked (once) to close after its next response."""
    remaining = []
    for connection in server.connections:
        if not isinstance(connection, HttpConnection) or not connection.open:
            continue
        if connection not in marked:
            connection.close_after_response()
            marked.add(connection)
        remaining.append(connection)
    return remaining


def _exit_now(signum: int, runner: web.AppRunner, flush: Callable[[], None]) -> None:
    server = runner.server
    connections = server.connections if server is not None else []
    cut = sum(1 for c in connections if isinstance(c, HttpConnection) and c.busy)
    name = signal.Signals(signum).name
    try:
        log.warning("pid %d got a second %s: exiting at once, cutting %d request(s)", os.getpid(), name, cut)
        flush()
    finally:
        os._exit(EXIT_FORCED)  # whatever the log did: a second signal always ends the process
