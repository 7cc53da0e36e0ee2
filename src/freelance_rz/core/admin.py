"""An operator's actions on a producer's jobs over the wire (the ADMIN verb). Pure.

ADMIN lets a dashboard cancel a live job or submit a recent failure again. It is refused
(ERR 5, ``E_DENIED``) unless the producer was given an admin token and the request carries
it: the token is compared in constant time (:func:`hmac.compare_digest`), and a wrong one
changes nothing. Without CURVE the token crosses the network in clear text, like every other
frame (docs/security.md).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable

from . import wire as w
from .ledger import JobState
from .text import clean

log = logging.getLogger("freelance_rz.producer")


class AdminDesk:
    """Checks and carries out ADMIN requests for one offer engine.

    Args:
        token: the admin token (None: every ADMIN request is refused).
        state: ``state(job_id)``, a live job's state or None (the ledger's).
        cancel: ``cancel(job_id, now)`` cancels a live job (the engine's).
        retry: ``retry(job_id, now)`` submits a recent failure again and returns the new
            job's id, or None when ``job_id`` is no recent failure (None: retry is refused).
    """

    def __init__(
        self, token: str | None, state: Callable[[int], JobState | None],
        cancel: Callable[[int, float], None], retry: Callable[[int, float], int | None] | None,
    ) -> None:
        self._token = None if token is None else token.encode()
        self._state = state
        self._cancel = cancel
        self._retry = retry
        self._refused_logged_at = -3600.0

    def handle(self, msg: w.Admin, now: float) -> tuple[int | None, str]:
        """Carry out ``msg``: returns (None, "") when done, else (ERR code, message)."""
        if self._token is None:
            return w.E_DENIED, "admin actions are off on this producer (no admin_token)"
        if not hmac.compare_digest(msg.token.encode(), self._token):
            if now - self._refused_logged_at > 1.0:  # at most one line a second
                self._refused_logged_at = now
                log.warning("ADMIN %s of job %d refused: wrong token", clean(msg.action), msg.job_id)
            return w.E_DENIED, "wrong admin token"
        if msg.action == "cancel":
            if self._state(msg.job_id) is None:
                return w.E_INVALID, f"job {msg.job_id} is not pending or running here"
            self._cancel(msg.job_id, now)
            log.info("job %d cancelled by an operator (ADMIN)", msg.job_id)
            return None, ""
        if msg.action == "retry":
            new = None if self._retry is None else self._retry(msg.job_id, now)
            if new is None:
                return w.E_INVALID, f"job {msg.job_id} is not among this producer's recent failures"
            log.info("job %d submitted again as job %d by an operator (ADMIN)", msg.job_id, new)
            return None, ""
        return w.E_INVALID, f"unknown ADMIN action {clean(msg.action)!r} (cancel or retry)"
