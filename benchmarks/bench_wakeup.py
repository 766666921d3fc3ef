"""How much a paced request costs over a back-to-back one on this machine: a loopback echo, no HTTP, no pipeline.

Not a test. Run:

    .venv/bin/python benchmarks/bench_wakeup.py [--rates 0,50,150] [--requests 600] [--rounds 2]

A server process (uvloop, one keep-alive connection) echoes one byte; this process sends a byte and waits for
it, either closed loop (rate 0: the next send as soon as the answer is in) or at a fixed rate (evenly spaced
sends; latency counted from the scheduled send, as `bench_serving.py`'s open loop counts it), each rate twice:
with a plain `asyncio.sleep` until the send (whose lateness, the send lag, then counts as latency) and with
bench_serving's sleep-then-poll. Nothing is computed per request, so what a paced round trip costs over a
back-to-back one is what the machine charges for waking both processes from idle: a floor under
`bench_serving.py`'s open-loop figures, and one reason its 50 req/s runs can take longer than its 150 req/s
ones (more idle time between requests). Modes are interleaved over `--rounds` so they see the same load.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import time


def _serve(port: int, ready) -> None:
    import uvloop

    async def handle(reader, writer):
        while data := await reader.read(64):
            writer.write(data)

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        ready.set()
        await server.serve_forever()

    uvloop.run(main())


async def _client(port: int, rate: float, n: int, poll: float) -> tuple[list[float], list[float]]:
    """(latency from the scheduled send, ms; send lag, ms) of n paced or back-to-back round trips. `poll` > 0:
    sleep until `poll` s before each send, then poll the loop until it (bench_serving's open loop)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lat, lag = [], []
    t0 = time.perf_counter() + 0.01
    for i in range(n):
        due = t0 + i / rate if rate else time.perf_counter()
        delay = due - time.perf_counter()
        if delay > poll:
            await asyncio.sleep(delay - poll)
        while poll and time.perf_counter() < due:
            await asyncio.sleep(0)
        lag.append((time.perf_counter() - due) * 1e3)
        writer.write(b"x")
        await reader.readexactly(1)
        lat.append((time.perf_counter() - due) * 1e3)
    writer.close()
    return lat, lag


#: bench_serving.py's OPEN_LOOP_SPIN_S
POLL_S = 0.0015


def _pct(ms: list[float]) -> dict:
    s = sorted(ms)
    return {"n": len(s), "p50": s[len(s) // 2], "p99": s[min(len(s) - 1, int(len(s) * 0.99))]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="0,50,150", help="requests/s; 0: closed loop")
    ap.add_argument("--requests", type=int, default=600, help="per rate and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--port", type=int, default=0, help="0: a free port")
    args = ap.parse_args(argv)
    port = args.port
    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    ready = mp.Event()
    server = mp.Process(target=_serve, args=(port, ready), daemon=True)
    server.start()
    ready.wait(30)
    rates = [float(r) for r in args.rates.split(",")]
    modes = [(r, poll) for r in rates for poll in ((0.0,) if r == 0 else (0.0, POLL_S))]
    got: dict[tuple, tuple[list, list]] = {m: ([], []) for m in modes}
    try:
        for _ in range(args.rounds):
            for r, poll in modes:
                lat, lag = asyncio.run(_client(port, r, args.requests, poll))
                got[(r, poll)][0].extend(lat)
                got[(r, poll)][1].extend(lag)
    finally:
        server.terminate()
    print(f"loopback echo round trip, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    out = {}
    for r, poll in modes:
        name = "closed loop" if r == 0 else f"{r:g}/s, {'sleep + poll' if poll else 'sleep'}"
        lat, lag = _pct(got[(r, poll)][0]), _pct(got[(r, poll)][1])
        out[name] = {"latency_ms": lat, "send_lag_ms": lag}
        print(f"  {name:>20}: p50 {lat['p50']:.3f} ms  p99 {lat['p99']:.3f} ms  (send lag p50 {lag['p50']:.3f}, "
              f"p99 {lag['p99']:.3f})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
