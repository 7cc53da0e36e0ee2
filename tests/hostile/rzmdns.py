"""A hostile mDNS peer for the hostile tests: announces whatever it is told, on loopback only.

Run as ``python rzmdns.py SPEC.json``. SPEC is ``{"announce": [{"name": ..., "props": {...},
"port": N}, ...], "goodbye": [instance names], "goodbye_every_s": S}``: every announcement
is registered (without probing, as a forger would), ``ghosts`` names are announced by a PTR
record alone (what a dead producer leaves in caches once its SRV/TXT records expired), again
every S seconds, and forged goodbyes (PTR records with TTL 0) for the ``goodbye`` names are
sent every S seconds, until the process is killed; ``ready`` is printed once registered.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys

from zeroconf import DNSOutgoing, DNSPointer, IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf
from zeroconf.const import _CLASS_IN, _FLAGS_AA, _FLAGS_QR_RESPONSE, _TYPE_PTR

SERVICE_TYPE = "_freelance-rz._tcp.local."


async def main(spec: dict) -> None:
    aiozc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    infos = [
        ServiceInfo(
            SERVICE_TYPE, entry["name"], port=entry.get("port", 9),
            addresses=[socket.inet_aton("127.0.0.1")], properties=entry["props"],
            server=f"host-{i}.local.",
        )
        for i, entry in enumerate(spec.get("announce", []))
    ]
    for start in range(0, len(infos), 50):  # in batches: the sends of each take a while
        tasks = [
            await aiozc.async_register_service(info, cooperating_responders=True, strict=False)
            for info in infos[start:start + 50]
        ]
        await asyncio.gather(*tasks)
    ghosts = spec.get("ghosts", [])
    print("ready", flush=True)
    goodbyes = spec.get("goodbye", [])
    every = spec.get("goodbye_every_s", 2.0)
    while True:
        if ghosts:
            out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
            for name in ghosts:
                out.add_answer_at_time(DNSPointer(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN, 4500, name), 0)
            aiozc.zeroconf.async_send(out)
        if goodbyes:
            out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
            for name in goodbyes:
                out.add_answer_at_time(DNSPointer(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN, 0, name), 0)
            aiozc.zeroconf.async_send(out)
        await asyncio.sleep(every)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        asyncio.run(main(json.load(f)))
