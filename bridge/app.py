"""Composition root: settings → store → upstreams → dispatcher → SMTP and HTTP servers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx
from aiohttp import web

from bridge.console.api import AdminApi
from bridge.console.ops import ConsoleService
from bridge.console.pages import add_console
from bridge.console.trace import TraceRecorder
from bridge.errors import BridgeError
from bridge.inbound.app import make_http_app, make_http_runner
from bridge.inbound.polling import InboundPoller
from bridge.inbound.views import InboundService
from bridge.listen import Listeners, bind_listeners
from bridge.models import OutboundMail, StoredMessage
from bridge.outbox.dispatcher import Dispatcher
from bridge.outbox.leases import make_owner, owner_is_dead
from bridge.outbox.polling import StatusPoller
from bridge.outbox.receiving import StoreSink, UpstreamReceivers
from bridge.redact import redact_url, register_settings
from bridge.relays.email import MailRelay, build_bounce
from bridge.relays.forward import ForwardWorker
from bridge.settings import DEMO_LOGIN, DEMO_SOURCE, Settings
from bridge.smtp.handler import IntakeHandler
from bridge.smtp.server import start_smtp_server
from bridge.store import OutboxStore, open_store
from bridge.upstreams import registry
from bridge.upstreams.base import Upstream, provider_client

log = logging.getLogger(__name__)

T = TypeVar("T")
#: ``auto`` (the default: uvloop where it is installed, as by ``pip install
#: sms-bridge[fast]``), ``uvloop`` (required) or ``asyncio`` (the standard loop).
LOOP_VARIABLE = "SMS_BRIDGE_LOOP"
LOOP_CHOICES = ("auto", "uvloop", "asyncio")


class LoopUnavailable(BridgeError):
    """The event loop asked for cannot be had."""


def event_loop_factory(choice: str | None = None) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes the event loop of a serving process: uvloop (about a third less CPU per
    request in the HTTP and SMTP servers) where installed, unless ``choice`` (default: the
    ``SMS_BRIDGE_LOOP`` variable, else ``auto``) says ``asyncio``."""
    wanted = (choice or os.environ.get(LOOP_VARIABLE) or "auto").strip().lower()
    if wanted not in LOOP_CHOICES:
        raise LoopUnavailable(f"{LOOP_VARIABLE}={wanted!r}: expected one of "
                              f"{', '.join(LOOP_CHOICES)}")
    if wanted == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if wanted == "uvloop":
            raise LoopUnavailable(f"{LOOP_VARIABLE}=uvloop but uvloop is not installed "
                                  "(pip install 'sms-bridge[fast]')") from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run_serving(main: Coroutine[Any, Any, T], choice: str | None = None) -> T:
    """``asyncio.run(main)`` on the loop :func:`event_loop_factory` chooses."""
    try:
        factory = event_loop_factory(choice)
    except BaseException:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``, for the start log line."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


class Bridge:
    """One bridge process. ``start()`` binds the ports (0 = ephemeral), ``stop()`` drains."""

    HEARTBEAT = 5.0  # seconds between "alive" marks; the cluster's size divides rate limits

    def __init__(self, settings: Settings, *, reuse_port: bool = False,
                 listeners: Listeners | None = None) -> None:
        self.settings = settings
        # Every configured secret is masked in whatever this process logs or stores.
        register_settings(settings)
        # ``serve --workers N`` hands each worker the sockets its parent bound; otherwise
        # start() binds them (``reuse_port`` only for benchmarks running several bridges).
        self.reuse_port = reuse_port
        self.listeners = listeners
        self.store: OutboxStore = open_store(
            settings.store.url, busy_timeout=settings.store.busy_timeout
        )
        self.upstreams: dict[str, Upstream] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._smtp: list[asyncio.Server] = []
        self._http: web.AppRunner | None = None
        self._client: httpx.AsyncClient | None = None
        self.dispatcher: Dispatcher | None = None
        self.relay: MailRelay | None = None
        self.forwarder: ForwardWorker | None = None
        self._intake: IntakeHandler | None = None
        self._owner = ""
        self.status_poller: StatusPoller | None = None
        self.inbound_poller: InboundPoller | None = None
        self.receivers: UpstreamReceivers | None = None  # upstreams holding a bind (SMPP)
        self.traces: TraceRecorder | None = None
        self.smtp_port = 0
        self.http_port = 0

    async def start(self) -> None:
        """Bind the ports, open the store, start the workers, then serve SMTP and HTTP.

        A start that fails part-way (the store unreachable once the ports are bound, a
        certificate unreadable once the workers run, an HTTP listener refused once SMTP
        serves) stops what it started as :meth:`stop` does and closes the listening
        sockets, then raises: nothing is left bound or running."""
        # Bound first: a port in use is reported before the store is opened or created.
        listeners = self.listeners or bind_listeners(self.settings, reuse_port=self.reuse_port)
        try:
            await self._start(listeners)
        except BaseException:
            try:
                await self._shut_down()
            except Exception:
                log.exception("stopping what a failed start had started failed")
            finally:
                listeners.close()  # those no server took over (a server closes its own)
            log.info("sms-bridge start failed; what it had started is stopped")
            raise

    async def _start(self, listeners: Listeners) -> None:
        settings = self.settings
        await self.store.open()
        bridge_id = await self.store.bridge_id()
        self._client = provider_client()
        self.upstreams = {
            name: registry.build(name, config, self._client)
            for name, config in settings.upstreams.items()
        }
        # The operators' console: provider requests and answers of each send, and each
        # upstream's health, traced before the dispatcher takes the upstreams.
        self.traces = TraceRecorder(self.store,
                                    enabled=settings.store.trace_retention_days > 0)
        self.traces.install(self._client, self.upstreams)
        self._tasks.append(asyncio.create_task(self.traces.run(), name="traces"))

        def bounce(message: StoredMessage, error: str) -> OutboundMail | None:
            return build_bounce(settings.mail, settings.smtp.hostname, message, error)

        # One lease owner for this process; the leases of a dead predecessor on this host
        # are released before any worker claims.
        owner = make_owner()
        released = await self.store.expire_leases(owner_is_dead)
        if released:
            log.warning("resuming work left in flight by a stopped process",
                        extra={"rows": released})
        self.dispatcher = Dispatcher(self.store, self.upstreams, settings, bridge_id=bridge_id,
                                     bounce=bounce, owner=owner)
        self._tasks.append(asyncio.create_task(self.dispatcher.run(), name="dispatcher"))
        if settings.mail.smarthost:
            self.relay = MailRelay(self.store, settings.mail, owner=owner)
            self._tasks.append(asyncio.create_task(self.relay.run(), name="mail-relay"))
        self.forwarder = ForwardWorker(self.store, settings, self._client, owner=owner,
                                       bridge_id=bridge_id)
        await self.forwarder.check_targets()
        self._tasks.append(asyncio.create_task(self.forwarder.run(), name="forwarder"))

        handler = IntakeHandler(
            settings,
            self.store,
            on_enqueued=self.dispatcher.wake,
            on_mail_queued=self.relay.wake if self.relay else (lambda: None),
        )
        self._smtp = await start_smtp_server(settings, handler, listeners.smtp)
        self.smtp_port = listeners.smtp[0].getsockname()[1]

        service = InboundService(settings, self.store, self._client,
                                 on_forward=self.forwarder.notify)
        self.status_poller = StatusPoller(self.store, self.upstreams, settings)
        self.inbound_poller = InboundPoller(self.store, self.upstreams, settings,
                                            service.accept_polled, owner=owner)
        self._intake = handler
        self._owner = owner
        self._tasks.append(asyncio.create_task(self.status_poller.run(), name="status-poller"))
        self._tasks.append(asyncio.create_task(self.inbound_poller.run(), name="inbound-poller"))
        self.receivers = UpstreamReceivers(
            self.upstreams, StoreSink(self.store, service.accept_polled, owner=owner))
        self._tasks.append(asyncio.create_task(self.receivers.run(), name="upstream-receivers"))
        console = ConsoleService(settings, self.store, service, self.upstreams)
        # The admin API audits the reply-script changes made through the inbound service's
        # endpoints; its other routes and the operators' pages (/admin/) come after those.
        api = AdminApi(console)
        app = make_http_app(self.store, service, audited=api.audited)
        api.add_routes(app)
        add_console(app, console)
        # The bridge's own HTTP server: JSON refusals, no request line in any log.
        self._http = make_http_runner(app, settings.http)
        await self._http.setup()
        for sock in listeners.http:
            await web.SockSite(self._http, sock).start()
        self.http_port = listeners.http[0].getsockname()[1]
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        if settings.embedded_demo:
            self._announce_demo()
        log.info(
            "sms-bridge started",
            extra={"smtp": f"{settings.smtp.host}:{self.smtp_port}",
                   "http": f"{settings.http.host}:{self.http_port}",
                   "store": redact_url(settings.store.url),
                   "upstreams": sorted(self.upstreams),
                   "loop": loop_name(asyncio.get_running_loop())},
        )

    def _announce_demo(self) -> None:
        """On the bare defaults, how to try each side: where to mail the demo account and
        where to push an SMS from the demo source (loopback clients only)."""
        settings = self.settings

        def local(host: str) -> str:  # an address this machine reaches the listener at
            if host in ("", "0.0.0.0", "::"):
                return "127.0.0.1"
            return f"[{host}]" if ":" in host else host

        log.info(f"demo account: mail to {DEMO_LOGIN}@localhost with the phone in the "
                 f"Subject (or to PHONE.{DEMO_LOGIN}@localhost) at "
                 f"{local(settings.smtp.host)}:{self.smtp_port}; the dryrun upstream "
                 "'sends' it")
        url = (f"http://{local(settings.http.host)}:{self.http_port}"
               f"/in/{DEMO_SOURCE}/{DEMO_SOURCE}/mo")
        log.info(f"demo source: push an SMS from a phone to {url}?phone=79161234567"
                 "&message=hello&sms_id=1 (GET or POST; `sms-bridge inbound` lists them)")

    async def _housekeeping(self) -> None:
        last_purge = 0.0
        while True:
            now = time.time()
            with contextlib.suppress(Exception):
                size = await self.store.heartbeat(self._owner, now, 3 * self.HEARTBEAT)
                if self.dispatcher is not None:
                    self.dispatcher.set_cluster_size(size)
                if self._intake is not None:
                    self._intake.cluster_size = size
            if now - last_purge > 3600:
                with contextlib.suppress(Exception):
                    await self.store.purge(now, self.settings.smtp.duplicate_window)
                with contextlib.suppress(Exception):
                    await self.store.prune_traces(
                        now - self.settings.store.trace_retention_days * 86400)
                last_purge = now
            await asyncio.sleep(self.HEARTBEAT)

    async def stop(self) -> None:
        await self._shut_down()
        log.info("sms-bridge stopped")

    async def _shut_down(self) -> None:
        """Stop whatever runs, in the order that loses nothing: the servers first (no new
        work), then the workers (in-flight work records its outcome), then the upstreams,
        the HTTP client and the store. Safe on a bridge that started only in part."""
        for smtp in self._smtp:
            smtp.close()
        self._smtp = []
        if self._http is not None:
            await self._http.cleanup()
            self._http = None
        # Ask every worker to stop, let in-flight work record its outcome, then cancel.
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        for worker in (self.relay, self.forwarder, self.status_poller, self.inbound_poller,
                       self.receivers):
            if worker is not None:
                await worker.stop()
        if self.traces is not None:
            await self.traces.stop()
        running = [t for t in self._tasks if t.get_name() != "housekeeping"]
        if running:
            await asyncio.wait(running, timeout=10.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for upstream in self.upstreams.values():
            await upstream.aclose()
        if self._client is not None:
            await self._client.aclose()
        await self.store.close()

    async def __aenter__(self) -> Bridge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
