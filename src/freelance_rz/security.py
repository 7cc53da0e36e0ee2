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
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
import zmq.auth.thread

log = logging.getLogger("freelance_rz.security")


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

    def start(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        """Serve ZAP requests of ``ctx`` (a context of the producer's own) on a thread."""
        self._auth = zmq.auth.thread.ThreadAuthenticator(ctx, log=_ZapLog())
        self._auth.start()
        self._auth.configure_curve(domain="*", location=self.authorized)

    def secure(self, sock: zmq.Socket[bytes]) -> None:
        """Make ``sock`` a CURVE server with this key pair (before binding)."""
        sock.curve_secretkey = self.keys.secret
        sock.curve_publickey = self.keys.public
        sock.curve_server = True

    def stop(self) -> None:
        """Stop the ZAP thread. Safe to call twice."""
        auth, self._auth = self._auth, None
        if auth is not None:
            auth.stop()


class _ZapLog:
    """The logger given to ``zmq.auth``: it logs its decisions at debug level, but a refused
    client key deserves a warning on the producer's side too (once per key)."""

    def __init__(self) -> None:
        self._log = logging.getLogger("freelance_rz.security.zap")
        self._warned: set[str] = set()

    def debug(self, msg: str, *args: object) -> None:
        args = tuple(a.decode(errors="replace") if isinstance(a, bytes) else a for a in args)
        text = msg % args if args else msg
        if text.startswith("DENIED") and text not in self._warned:
            self._warned.add(text)
            log.warning("refused a client: %s (its public key is not in authorized_workers)", text)
        else:
            self._log.debug(text)

    def info(self, msg: str, *args: object) -> None:
        self._log.info(msg, *args)

    def warning(self, msg: str, *args: object) -> None:
        self._log.warning(msg, *args)

    def error(self, msg: str, *args: object) -> None:
        self._log.error(msg, *args)


HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def handshake_failure(
    monitor: zmq.Socket[bytes], keys: KeyPair | None, who: str = "this worker"
) -> str | None:
    """Drain a socket monitor (made with :data:`HANDSHAKE_EVENTS`); explain the last failed
    handshake in words an operator can act on, or None when there was none. ``keys``: this
    side's key pair, None without CURVE; ``who``: this side, for the message."""
    from zmq.utils.monitor import recv_monitor_message

    event = None
    while True:
        try:
            event = recv_monitor_message(monitor, zmq.NOBLOCK)["event"]
        except zmq.Again:
            break
    if event is None:
        return None
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        key_file = keys.public_file if keys is not None else "NAME.key"
        return (f"it refused {who}'s key: copy {key_file} into the producer's "
                "authorized_workers directory and restart the producer")
    if keys is not None:
        return ("the CURVE handshake failed: the producer does not use CURVE, or not the key "
                f"{who} trusts for it")
    return f"the handshake failed: the producer probably requires CURVE keys (start {who} with --key and --trust)"
