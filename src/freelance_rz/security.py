"""CURVE keys for producers and workers: authenticated, encrypted peers (opt-in).

ZeroMQ CURVE (CurveZMQ, ZMTP RFC 26) encrypts every connection and proves each side holds the
secret key of its public key; ZAP (RFC 27), served by pyzmq's ``zmq.auth`` authenticator,
decides which client keys a producer accepts. Key files are the ones ``zmq.auth`` writes and
reads (``NAME.key`` holds the public key, ``NAME.key_secret`` both keys), so czmq and pyzmq
tools work with them too.

- A producer uses its key pair and accepts only workers whose ``NAME.key`` is in its
  ``authorized_workers`` directory; it announces its public key in its mDNS TXT record (``pk``).
- A worker uses its key pair and connects only to producers whose public key is in its
  ``trust`` directory. mDNS stays unauthenticated: a forged announcement can only name a key,
  and a producer without that key's secret cannot complete the handshake.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
import zmq.auth.thread

from .core.text import clean

log = logging.getLogger("freelance_rz.security")

#: refused client keys a producer remembers (so a client retrying is not warned about again);
#: the least recently refused is forgotten first. 256 keys of 40 bytes: a few tens of KiB.
ZAP_REMEMBERED_KEYS = 256
#: at most one "refused a client" warning per this many seconds; the refusals in between are
#: summed up in the next line ("N more clients refused in the last S s").
ZAP_WARNING_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A CURVE key pair, both keys Z85-encoded (40 bytes each); ``public_file`` names the
    ``NAME.key`` file to share (for messages)."""

    public: bytes
    secret: bytes
    public_file: str = "NAME.key"


def generate_keypair(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (mode 0600) into ``directory``.

    Returns the two paths (public, secret). The directory is created (mode 0700) if missing.

    Raises:
        ValueError: ``name`` is empty or holds a path separator.
        FileExistsError: either file exists already (keys are never overwritten).
    """
    if not name or os.sep in name or name.startswith("."):
        raise ValueError(f"key name must be a plain file name, got {name!r}")
    target = Path(directory)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = target / f"{name}.key", target / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} exists; remove it first to make a new key pair")
    # Written in a private directory and moved, so the secret key is never readable by others.
    with tempfile.TemporaryDirectory(dir=target) as scratch:
        made_public, made_secret = zmq.auth.create_certificates(scratch, name)
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        os.replace(made_secret, secret)
        os.replace(made_public, public)
    return public, secret


def load_keypair(path: str | os.PathLike[str]) -> KeyPair:
    """Read a key pair from a ``NAME.key_secret`` file (also accepts the ``NAME.key`` path
    when the secret file sits next to it).

    Raises:
        ValueError: the file is missing, holds no secret key, or is not a key file.
    """
    source = Path(path)
    if source.suffix == ".key" and source.with_suffix(".key_secret").exists():
        source = source.with_suffix(".key_secret")
    try:
        public, secret = zmq.auth.load_certificate(source)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read a key pair from {source}: {exc}") from None
    if secret is None:
        raise ValueError(
            f"{source} holds only a public key; give the NAME.key_secret file "
            "(made by `freelance-keys generate NAME`)"
        )
    return KeyPair(public, secret, str(source.with_suffix(".key")))


def load_public_keys(directory: str | os.PathLike[str]) -> frozenset[bytes]:
    """The public keys of every ``*.key`` file in ``directory``.

    Raises:
        ValueError: the directory is missing or holds no public key.
    """
    try:
        keys = zmq.auth.load_certificates(directory)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read public keys from {directory}: {exc}") from None
    if not keys:
        raise ValueError(
            f"{directory} holds no public key (*.key file); copy the peers' NAME.key files there"
        )
    return frozenset(keys)


def trusted_key_files(directory: str | os.PathLike[str]) -> dict[bytes, str]:
    """Each public key of the ``*.key`` files in ``directory`` -> the name of a file that
    holds it (for log lines saying which key a producer was found to hold).

    Raises:
        ValueError: the directory is missing or holds no public key.
    """
    found: dict[bytes, str] = {}
    try:
        paths = sorted(Path(directory).glob("*.key"))
    except OSError as exc:
        raise ValueError(f"cannot read public keys from {directory}: {exc}") from None
    for path in paths:
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError):
            continue  # as zmq.auth.load_certificates: a file that is not a key is not one
        found.setdefault(public, path.name)
    if not found:
        load_public_keys(directory)  # raises, saying why
    return found


#: how :func:`probe_server_key`'s reason starts when the producer answered and no key matched
NO_KEY_MATCHED = "none of the"
#: keys tried at once when probing a producer for its CURVE key (one DEALER each)
PROBE_BATCH = 64
_PROBE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def probe_server_key(
    ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, keys: KeyPair, candidates: Sequence[bytes],
    timeout_s: float,
) -> tuple[bytes | None, str]:
    """Find which of ``candidates`` is the CURVE public key of the producer at ``endpoint``.

    A CURVE client must name the server's key before it connects, and a wrong key fails at
    the server's first reading of the client's HELLO. So one DEALER per candidate (up to
    :data:`PROBE_BATCH` at once) connects, with a socket monitor each, and the first whose
    handshake succeeds, or is refused by the producer's ZAP (``HANDSHAKE_FAILED_AUTH``: the
    key was right, this side's key is not authorised), names the key. One round trip when
    the producer is up. No message is sent; every socket is closed before returning.

    Args:
        ctx: a ZeroMQ context.
        endpoint: ``tcp://ADDRESS:PORT``.
        keys: this side's key pair.
        candidates: the producer keys to try (Z85).
        timeout_s: seconds to wait for each batch.

    Returns:
        ``(key, "")``, or ``(None, why)`` when no candidate's handshake worked.
    """
    from zmq.utils.monitor import recv_monitor_message

    candidates = list(dict.fromkeys(candidates))
    failed = 0
    for start in range(0, len(candidates), PROBE_BATCH):
        batch = candidates[start:start + PROBE_BATCH]
        opened: list[tuple[zmq.Socket[bytes], zmq.Socket[bytes], bytes]] = []
        try:
            poller = zmq.Poller()
            for key in batch:
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                make_curve_client(sock, keys, key)
                monitor = sock.get_monitor_socket(_PROBE_EVENTS)
                opened.append((sock, monitor, key))
                sock.connect(endpoint)
                poller.register(monitor, zmq.POLLIN)
            keys_of = {monitor: key for _, monitor, key in opened}
            refused: set[bytes] = set()
            deadline = time.monotonic() + timeout_s
            while (left := deadline - time.monotonic()) > 0 and len(refused) < len(batch):
                for monitor, _ in poller.poll(int(left * 1000) + 1):
                    event = int(recv_monitor_message(monitor)["event"])
                    if event in (zmq.EVENT_HANDSHAKE_SUCCEEDED, zmq.EVENT_HANDSHAKE_FAILED_AUTH):
                        return keys_of[monitor], ""
                    refused.add(keys_of[monitor])
            failed += len(refused)
        finally:
            for sock, monitor, _ in opened:
                sock.disable_monitor()
                monitor.close(0)
                sock.close(0)
    if failed == len(candidates):
        return None, (f"{NO_KEY_MATCHED} {len(candidates)} trusted key(s) is its key (or it does not "
                      "use CURVE)")
    return None, f"no CURVE handshake within {timeout_s:g} s (is it up?)"


def check_pair(secret_key: object, trusted: object, what: tuple[str, str]) -> None:
    """Both CURVE settings or neither: ``what`` names them for the error message.

    Raises:
        ValueError: exactly one of the two is given.
    """
    if (secret_key is None) != (trusted is None):
        given, missing = what if trusted is None else what[::-1]
        raise ValueError(
            f"{given} needs {missing} too: CURVE needs this side's key pair and the keys of the "
            "peers it accepts (or neither, for an unauthenticated setup)"
        )


def make_curve_client(sock: zmq.Socket[bytes], keys: KeyPair, server_key: bytes) -> None:
    """Make ``sock`` a CURVE client of the server with public key ``server_key`` (before
    connecting)."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = server_key


class CurveServer:
    """ZAP authentication for one producer's private ZeroMQ context: CURVE clients whose
    public key is in ``authorized`` (a directory of ``*.key`` files) may connect. Keys are
    read when the producer starts; restart it to change them.

    Raises:
        ValueError: the directory is missing or holds no public key.
    """

    def __init__(self, keys: KeyPair, authorized: str | os.PathLike[str]) -> None:
        load_public_keys(authorized)  # a clear error now, not a producer nobody can reach
        self.keys = keys
        self.authorized = Path(authorized)
        self._auth: zmq.auth.thread.ThreadAuthenticator | None = None
        self.zap_log = _ZapLog()

    def start(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        """Serve ZAP requests of ``ctx`` (a context of the producer's own) on a thread."""
        self._auth = zmq.auth.thread.ThreadAuthenticator(ctx, log=self.zap_log)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=self.authorized)

    def secure(self, sock: zmq.Socket[bytes]) -> None:
        """Make ``sock`` a CURVE server with this key pair (before binding)."""
        sock.curve_secretkey = self.keys.secret
        sock.curve_publickey = self.keys.public
        sock.curve_server = True

    def stop(self) -> None:
        """Stop the ZAP thread (then log the refusals not reported yet). Safe to call twice."""
        auth, self._auth = self._auth, None
        if auth is not None:
            auth.stop()
            self.zap_log.flush()


class _ZapLog:
    """The logger given to ``zmq.auth``: it logs its decisions at debug level, but a refused
    client key deserves a warning on the producer's side too.

    A client that keeps retrying with the same key is warned about once (the last
    :data:`ZAP_REMEMBERED_KEYS` refused keys are remembered, least recently refused forgotten
    first), and a flood of new keys costs at most one warning line per
    :data:`ZAP_WARNING_INTERVAL_S` seconds: the refusals in between are counted and reported
    in the next line, or by :meth:`flush`. Every string is passed through
    :func:`~freelance_rz.core.text.clean` (ZAP requests carry client-chosen bytes).

    Args:
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logging.getLogger("freelance_rz.security.zap")
        self._clock = clock
        self._remembered: OrderedDict[str, None] = OrderedDict()
        self._last_line_at: float | None = None  # when the last warning line was written
        self._held = 0  # refusals of new keys since then, not yet in a line
        self._held_example = ""  # the latest of them, for the summary

    @staticmethod
    def _format(msg: str, args: tuple[object, ...]) -> str:
        args = tuple(a.decode(errors="replace") if isinstance(a, bytes) else a for a in args)
        try:
            text = msg % args if args else msg
        except (TypeError, ValueError):
            text = " ".join(map(str, (msg, *args)))
        return clean(text, 300)

    def debug(self, msg: str, *args: object) -> None:
        text = self._format(msg, args)
        if text.startswith("DENIED"):
            # CURVE refusals end with "client_key=KEY": remember the key, not the line
            key = text.rpartition("client_key=")[2] if "client_key=" in text else text
            self._refused(key, text)
        self._log.debug("%s", text)

    def _refused(self, key: str, text: str) -> None:
        if key in self._remembered:
            self._remembered.move_to_end(key)
            return
        self._remembered[key] = None
        if len(self._remembered) > ZAP_REMEMBERED_KEYS:
            self._remembered.popitem(last=False)
        now = self._clock()
        if self._last_line_at is not None and now - self._last_line_at < ZAP_WARNING_INTERVAL_S:
            self._held += 1
            self._held_example = text
            return
        if self._held:
            self._held += 1
            self._held_example = text
            self.flush()
        else:
            log.warning("refused a client: %s (its public key is not in authorized_workers)", text)
        self._last_line_at = now

    def flush(self) -> None:
        """Write the summary line of refusals not reported yet, if any."""
        if not self._held:
            return
        since = 0.0 if self._last_line_at is None else self._clock() - self._last_line_at
        log.warning(
            "%d more clients refused in the last %.1f s (their public keys are not in "
            "authorized_workers; the latest: %s)", self._held, since, self._held_example,
        )
        self._held, self._held_example = 0, ""

    @property
    def remembered(self) -> int:
        """How many refused keys are remembered now (at most :data:`ZAP_REMEMBERED_KEYS`)."""
        return len(self._remembered)

    def info(self, msg: str, *args: object) -> None:
        self._log.info("%s", self._format(msg, args))

    def warning(self, msg: str, *args: object) -> None:
        self._log.warning("%s", self._format(msg, args))

    def error(self, msg: str, *args: object) -> None:
        self._log.error("%s", self._format(msg, args))


HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def handshake_failure(
    monitor: zmq.Socket[bytes], keys: KeyPair | None, who: str = "this worker"
) -> str | None:
    """Drain a socket monitor (made with :data:`HANDSHAKE_EVENTS`); explain the last failed
    handshake in words an operator can act on, or None when there was none or it was no
    settings problem (see :func:`describe_handshake_failure`). ``keys``: this side's key pair,
    None without CURVE; ``who``: this side, for the message."""
    from zmq.utils.monitor import recv_monitor_message

    events = []
    while True:
        try:
            events.append(recv_monitor_message(monitor, zmq.NOBLOCK)["event"])
        except zmq.Again:
            break
    return last_described(events, keys, who)


def last_described(events: Sequence[int], keys: KeyPair | None, who: str) -> str | None:
    """The explanation of the newest of ``events`` (``zmq.EVENT_*``, oldest first) that says
    something about the settings, or None. A refused CURVE handshake is often followed by
    dropped reconnections (NO_DETAIL), which must not hide it."""
    for event in reversed(events):
        if event & HANDSHAKE_EVENTS:
            described = describe_handshake_failure(event, keys, who)
            if described is not None:
                return described
    return None


#: the first bytes of a ZMTP 3 greeting (RFC 23/37): signature (0xFF, 8 padding bytes, 0x7F)
#: and major version 3. A libzmq peer answers them with its whole greeting.
_ZMTP3_OPENING = b"\xff" + bytes(8) + b"\x7f" + b"\x03"


def greeting_mechanism(host: str, port: int, timeout_s: float) -> str | None:
    """The security mechanism (``"NULL"``, ``"CURVE"``, ``"PLAIN"``) the ZeroMQ peer at
    ``host``:``port`` names in its ZMTP greeting, or None when it sent no ZMTP 3 greeting
    within ``timeout_s`` seconds (nothing listens, it closed the connection, or it does not
    speak ZMTP).

    Why: a client without keys whose handshake a CURVE producer ends is told
    HANDSHAKE_FAILED_PROTOCOL (a mechanism mismatch) or, when the producer's close resets the
    connection before its greeting was read, HANDSHAKE_FAILED_NO_DETAIL, the very event of a
    producer that stopped mid-handshake. Only the greeting tells them apart. This sends the
    signature and version only (no mechanism, no message), reads the peer's 64-byte greeting
    and closes: the peer sees a client that left during the handshake. Never raises.
    """
    deadline = time.monotonic() + timeout_s
    data = b""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(_ZMTP3_OPENING)
            while len(data) < 32:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                sock.settimeout(left)
                chunk = sock.recv(64 - len(data))
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    if len(data) < 32 or data[0] != 0xFF or not data[9] & 1 or data[10] < 3:
        return None
    return data[12:32].rstrip(b"\0").decode("ascii", "replace")


def describe_handshake_failure(event: int, keys: KeyPair | None, who: str = "this worker") -> str | None:
    """Explain a failed handshake (``event``: one of :data:`HANDSHAKE_EVENTS`) in words an
    operator can act on, or None when it says nothing about the settings. ``keys``: this
    side's key pair, None without CURVE; ``who``: this side, for the message.

    What libzmq reports (measured with libzmq 4.3): a key the producer's ZAP refuses is
    HANDSHAKE_FAILED_AUTH; CURVE on one side only is HANDSHAKE_FAILED_PROTOCOL (a mechanism
    mismatch); a CURVE client with the wrong server key sees the server close the connection,
    HANDSHAKE_FAILED_NO_DETAIL (EPIPE), exactly as any client does when the producer stops or
    is killed mid-handshake. So NO_DETAIL without keys is a dropped connection, not a setting.
    """
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        key_file = keys.public_file if keys is not None else "NAME.key"
        return (f"it refused {who}'s key: copy {key_file} into the producer's "
                "authorized_workers directory and restart the producer")
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        if keys is None:
            return None
        return ("the CURVE handshake failed: the producer closed the connection (it does not "
                f"have the key {who} trusts for it, or it stopped)")
    if keys is not None:
        return ("the CURVE handshake failed: the producer does not use CURVE, or not the key "
                f"{who} trusts for it")
    return f"the handshake failed: the producer probably requires CURVE keys (start {who} with --key and --trust)"
