"""The dashboard's web server: one page, updated live over Server-Sent Events, with aiohttp.

aiohttp was chosen over starlette + uvicorn because one well-kept package gives the server,
streaming responses (SSE), static files and graceful start and stop inside our own event
loop, with no ASGI server to configure beside it.

Routes: ``/`` the page, ``/static/...`` its script, style and the vendored chart library
(uPlot, MIT: no CDN, nothing fetched at run time), ``/api/state`` the current snapshot
(JSON), ``/events`` the snapshots as they come (``text/event-stream``, one per poll),
``/metrics`` the producers' metrics for Prometheus (with the ``producer`` label), and, with
a token only, ``POST /api/action`` (cancel a job, retry a failure; ``Authorization: Bearer
TOKEN``), passed on to the producer as an ADMIN request carrying that token.

Polls run on a thread of the event loop's executor (ZeroMQ calls block); each poll's snapshot
is encoded once and written to every open event stream. A page is never reloaded: the browser's
``EventSource`` reconnects by itself when the dashboard restarts.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ..core.wire import MAX_UINT, is_id
from .fleet import Fleet

log = logging.getLogger("freelance_rz.dashboard")

STATIC = Path(__file__).parent / "static"
KEEPALIVE_S = 15.0  # an idle event stream gets a comment line this often (proxies close idle ones)
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SECURITY_HEADERS = {
    # only this page's own script, style and connections; uPlot sizes its canvas by CSSOM
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

Poll = Callable[[], list[dict[str, Any]]]
Admin = Callable[[str, str, str, int], "str | None"]  # (endpoint, token, action, job_id) -> error


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Dashboard:
    """The dashboard server and its poller.

    Args:
        poll: ``poll()`` returns one row per producer (detailed STATUS, or an ``error`` row);
            called on an executor thread every ``interval_s`` seconds.
        group: the producers' group, shown.
        interval_s: seconds between polls.
        token: with a token, the page may cancel jobs and retry failures (the request must
            carry the token, which the producer checks too); None: read-only.
        admin: ``admin(endpoint, token, action, job_id)`` sends an ADMIN request and returns
            None when done, else why not (:func:`freelance_rz.status.send_admin`).
    """

    def __init__(self, poll: Poll, *, group: str, interval_s: float, token: str | None = None,
                 admin: Admin | None = None) -> None:
        self.poll = poll
        self.interval_s = interval_s
        self.token = token
        self.admin = admin
        self.fleet = Fleet(group=group)
        self.state = json.dumps(self.fleet.snapshot(time.time(), admin=token is not None))
        self.version = 0
        self._changed = asyncio.Event()
        self._up: dict[str, bool] = {}
        self.loopback_only = True  # set by serve(): refuse Host headers that are not loopback

    # --- polling ------------------------------------------------------------------------

    async def poll_forever(self) -> None:
        """Poll the producers every ``interval_s`` seconds and publish each snapshot."""
        loop = asyncio.get_running_loop()
        while True:
            asked = time.time()
            try:
                rows = await loop.run_in_executor(None, self.poll)
            except Exception:  # sockets could not be made: say so, try again next time
                log.exception("polling the producers failed")
                rows = None
            if rows is not None:
                self.publish(rows, asked)
            await asyncio.sleep(max(0.0, self.interval_s - (time.time() - asked)))

    def publish(self, rows: list[dict[str, Any]], asked: float) -> None:
        """Take one poll's rows and wake every event stream."""
        now = time.time()
        self.fleet.update(rows, now)
        snapshot = self.fleet.snapshot(now, admin=self.token is not None)
        snapshot["asked_at"] = asked
        self.state = json.dumps(snapshot)
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()
        for producer in snapshot["producers"]:
            was = self._up.get(producer["endpoint"])
            if was != producer["up"]:
                self._up[producer["endpoint"]] = producer["up"]
                log.log(logging.INFO if producer["up"] else logging.WARNING, "producer %s %s%s",
                        producer["id"], "up" if producer["up"] else "down",
                        f": {producer['error']}" if producer["error"] else "",
                        extra={"producer": producer["id"], "endpoint": producer["endpoint"]})

    # --- the web side -------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", STATIC)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/events", self._events)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/api/action", self._action)
        return app

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Refuse a Host header that is not loopback when serving on loopback (a web page
        elsewhere cannot read this one through DNS rebinding); add the security headers."""
        host = (request.host or "").rsplit(":", 1)[0] if not (request.host or "").startswith("[") \
            else (request.host or "").split("]")[0] + "]"
        if self.loopback_only and not is_loopback(host):
            return web.Response(status=421, text="this dashboard answers on loopback names only\n")
        response = await handler(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def _state(self, request: web.Request) -> web.Response:
        return web.Response(text=self.state, content_type="application/json")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        sent = -1
        try:
            while True:
                if sent != self.version:
                    sent = self.version
                    await response.write(f"id: {sent}\ndata: {self.state}\n\n".encode())
                else:
                    await response.write(b": keep-alive\n\n")
                try:
                    await asyncio.wait_for(self._changed.wait(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    pass
        except (ConnectionResetError, RuntimeError):  # the page went away
            pass
        return response

    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            from prometheus_client import CollectorRegistry, generate_latest

            from .metrics import FleetCollector
        except ImportError:
            return web.Response(status=501, text="metrics need prometheus_client "
                                "(pip install 'freelance_rz[dashboard]')\n")
        registry = CollectorRegistry(auto_describe=False)
        registry.register(FleetCollector(self.fleet))
        return web.Response(body=generate_latest(registry), headers={
            "Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def _action(self, request: web.Request) -> web.Response:
        """Cancel a job or retry a failure at one producer (token only)."""
        if self.token is None or self.admin is None:
            return web.json_response({"ok": False, "error": "this dashboard is read-only "
                                      "(start it with --token-file)"}, status=403)
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return web.json_response({"ok": False, "error": "wrong or missing token"}, status=401)
        try:
            body = await request.json()
            endpoint, action, job_id = body["endpoint"], body["action"], body["job_id"]
            if endpoint not in self.fleet.producers or action not in ("cancel", "retry"):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return web.json_response({"ok": False, "error": "expected {endpoint, action: cancel|retry, "
                                      "job_id} of a producer shown"}, status=400)
        if not is_id(job_id):
            return web.json_response({"ok": False, "error": f"job_id must be an integer from 1 to "
                                      f"{MAX_UINT} (a job id the producer gave)"}, status=400)
        error = await asyncio.get_running_loop().run_in_executor(
            None, self.admin, endpoint, self.token, action, job_id)
        log.info("%s of job %d at %s: %s", action, job_id, endpoint, error or "done",
                 extra={"job_id": job_id, "endpoint": endpoint})
        return web.json_response({"ok": error is None, "error": error}, status=200 if error is None else 409)


async def serve(dashboard: Dashboard, host: str, port: int, ready: Callable[[str], None]) -> None:
    """Serve ``dashboard`` on ``host:port`` until cancelled; ``ready(url)`` once listening.

    Raises:
        OSError: the address cannot be bound.
    """
    dashboard.loopback_only = is_loopback(host)
    runner = web.AppRunner(dashboard.app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        shown = f"[{host}]" if ":" in host else host
        ready(f"http://{shown}:{bound}/")
        poller = asyncio.create_task(dashboard.poll_forever())
        try:
            await asyncio.Event().wait()
        finally:
            poller.cancel()
    finally:
        await runner.cleanup()
