"""The live web dashboard of ``freelance-status --serve [HOST:]PORT`` (the ``dashboard``
extra: aiohttp, and prometheus_client for its ``/metrics``). :mod:`.fleet` builds the page's
picture from the producers' detailed STATUS replies (pure); :mod:`.server` serves the page,
its Server-Sent Events and the admin actions; ``static/`` holds the page, its script and the
vendored chart library (uPlot, MIT). See docs/operations.md."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from .server import Admin, Dashboard, Poll, is_loopback, serve

log = logging.getLogger("freelance_rz.dashboard")


def run(poll: Poll, admin: Admin | None, *, host: str, port: int, group: str, interval_s: float,
        token: str | None, ready: Callable[[str], None]) -> None:
    """Serve the dashboard until SIGTERM (returns) or Ctrl-C (raises KeyboardInterrupt).

    Args:
        poll: ``poll()`` -> the producers' detailed STATUS rows (one per producer).
        admin: sends an operator's action to a producer (used only with ``token``).
        host, port: where to listen (127.0.0.1 by default in the CLI; port 0: any free one).
        group: shown on the page.
        interval_s: seconds between polls.
        token: enables cancel and retry from the page (None: read-only).
        ready: ``ready(url)`` once listening.

    Raises:
        OSError: the address cannot be bound.
    """
    if token is not None and not is_loopback(host):
        log.warning("admin actions are on and the dashboard listens on %s over plain HTTP: the "
                    "token crosses the network in clear text; put it behind a TLS proxy", host)
    dashboard = Dashboard(poll, group=group, interval_s=interval_s, token=token, admin=admin)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            await serve(dashboard, host, port, ready)
        except asyncio.CancelledError:
            pass

    asyncio.run(main())


__all__ = ["Dashboard", "run"]
