"""What DKIM signing costs the SMTP provider: sends per second to the loopback SMTP
server without and with a signature, alternating (A B A B) on one machine, and the
CPU time of one signature alone.

    python -m bench.dkim --n 3000 --rounds 3 [--json bench/results/dkim-….json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import statistics
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from policy.types import Content, DeliveryTask
from providers.email.smtp import WIRE, SmtpProvider
from sandbox import SmtpSink, free_port


def _task(i: int) -> DeliveryTask:
    return DeliveryTask(notification_id=f"00000000-0000-4000-8000-{i:012d}", user_id=f"u{i}", channel="email",
                        category="marketing", address=f"person{i}@example.org",
                        content=Content(subject="Your weekly digest", text="A line of the digest.\n" * 40,
                                        html="<p>A line of the digest.</p>" * 40))


def _sink(port: int, stop) -> None:
    sink = SmtpSink(port=port, keep_messages=False)
    sink.start()
    stop.wait()
    sink.stop()


async def _rate(settings: dict, n: int, concurrency: int) -> float:
    # the server in its own process, as a real one would be: only the sender's CPU is measured
    port, stop = free_port("127.0.0.1"), multiprocessing.Event()
    server = multiprocessing.Process(target=_sink, args=(port, stop), daemon=True)
    server.start()
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    p = SmtpProvider("bench", {"port": port, "pool_size": concurrency, **settings})
    try:
        await p.send(_task(0))  # connect outside the timing
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await p.send(_task(i))

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(1, n + 1)))
        return n / (time.perf_counter() - start)
    finally:
        await p.close()
        stop.set()
        server.join(10)


def _sign_cost(settings: dict, n: int = 500) -> float:
    p = SmtpProvider("bench", settings)
    raw = p.build_message(_task(1)).as_bytes(policy=WIRE)
    start = time.process_time()
    for _ in range(n):
        p.dkim.sign(raw)
    return (time.process_time() - start) / n * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.dkim", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="emails per run")
    ap.add_argument("--rounds", type=int, default=3, help="A B pairs")
    ap.add_argument("--concurrency", type=int, default=16, help="sends at once (and the provider's pool_size)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    plain = {"sender": "news@tidings.test", "unsubscribe_url": "https://tidings.test/u?u={user_id}"}
    signed = {**plain, "dkim_private_key": key, "dkim_selector": "bench"}
    runs: dict[str, list[float]] = {"plain": [], "dkim": []}
    for _ in range(args.rounds):
        for name, settings in (("plain", plain), ("dkim", signed)):
            runs[name].append(asyncio.run(_rate(settings, args.n, args.concurrency)))
            print(f"{name:5} {runs[name][-1]:8.0f} emails/s")
    out = {"n": args.n, "concurrency": args.concurrency, "rsa_bits": 2048,
           "plain_per_s": runs["plain"], "dkim_per_s": runs["dkim"],
           "ratio_median": statistics.median(runs["dkim"]) / statistics.median(runs["plain"]),
           "sign_cpu_ms": _sign_cost(signed)}
    print(f"dkim / plain (medians): {out['ratio_median']:.2f}; one signature: {out['sign_cpu_ms']:.2f} ms of CPU")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
