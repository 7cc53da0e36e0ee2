"""Parts for the hostile tests: a forger of mDNS announcements (rzmdns.py in a process of its
own), a fake producer that answers like a real one and records what it is sent, and readers
of a process's memory and file descriptors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from freelance_rz.core import wire as p

HERE = Path(__file__).parent
SERVICE_TYPE = "_freelance-rz._tcp.local."


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def txt(producer_id: str, group: str, endpoint: str, **extra: str) -> dict[str, str]:
    """TXT properties of an announcement (as discovery.Announcer writes them)."""
    return {"v": str(p.VERSION), "id": producer_id, "g": group, "ep": endpoint, **extra}


class MdnsForger:
    """Announces ``announce`` ([(instance label, TXT properties)]) on loopback mDNS, PTR
    records alone for the ``ghosts`` labels, and sends forged goodbyes for the instance names
    in ``goodbye`` every ``goodbye_every_s``, from a process of its own (killed, with its
    group, on exit)."""

    def __init__(self, tmp_path: Path, announce: list[tuple[str, dict[str, str]]] = (),
                 goodbye: list[str] = (), goodbye_every_s: float = 2.0,
                 ghosts: list[str] = ()) -> None:
        spec = {
            "ghosts": [f"{label}.{SERVICE_TYPE}" for label in ghosts],
            "announce": [{"name": f"{label}.{SERVICE_TYPE}", "props": props}
                         for label, props in announce],
            "goodbye": list(goodbye), "goodbye_every_s": goodbye_every_s,
        }
        self.spec_path = tmp_path / f"mdns-{id(self)}.json"
        self.spec_path.write_text(json.dumps(spec))
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MdnsForger:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "rzmdns.py"), str(self.spec_path)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        assert line == b"ready\n", f"the mDNS forger did not start: {line!r}"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


class FakeProducer:
    """A ROUTER on loopback that answers like a producer with one job to give: the first
    CLAIM gets ``job`` (a payload), later claims NOJOB after their wait; RESULT, DECLINE,
    CANCEL_CLAIM and BYE get ACK, BEAT gets BEAT_ACK with nothing void. Every decoded request
    is kept in ``received`` (with the routing id)."""

    def __init__(self, job: bytes | None = None, reply_nojob_now: bool = False) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.job = job
        self.reply_nojob_now = reply_nojob_now
        self.received: list[tuple[bytes, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeProducer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.ctx.destroy(linger=0)

    def verbs(self) -> list[str]:
        return [type(msg).__name__ for _, msg in self.received]

    def _reply(self, identity: bytes, msg: p.Message) -> None:
        self.sock.send_multipart([identity, *p.encode(msg)])

    def _serve(self) -> None:
        parked: list[tuple[float, bytes, int]] = []
        while not self._stop.is_set():
            if self.sock.poll(50):
                frames = self.sock.recv_multipart()
                try:
                    msg = p.decode_request(frames[1:])
                except Exception:
                    continue
                identity = frames[0]
                self.received.append((identity, msg))
                claim = msg if isinstance(msg, p.Claim) else getattr(msg, "claim", None)
                if isinstance(msg, (p.Result, p.Decline, p.CancelClaim, p.Bye)) and not (
                    isinstance(msg, p.Result) and msg.claim is not None and self.job is not None
                ):
                    self._reply(identity, p.Ack(rid=msg.rid))
                elif isinstance(msg, p.Beat):
                    self._reply(identity, p.BeatAck(rid=msg.rid, void=()))
                elif isinstance(msg, p.Status):
                    self._reply(identity, p.StatusReply(rid=msg.rid, info={"producer_id": "fake"}))
                if claim is not None:
                    if self.job is not None:
                        job, self.job = self.job, None
                        ack = msg.rid if isinstance(msg, p.Result) else None
                        self._reply(identity, p.Job(rid=claim.rid, job_id=1, lease_id=7, attempt=1,
                                                    lease_ms=1000, payload=job, ack=ack))
                    elif self.reply_nojob_now:
                        self._reply(identity, p.NoJob(rid=claim.rid))
                    else:
                        parked.append((time.monotonic() + claim.wait_ms / 1000, identity, claim.rid))
            now = time.monotonic()
            for entry in [e for e in parked if e[0] <= now]:
                parked.remove(entry)
                self._reply(entry[1], p.NoJob(rid=entry[2]))
