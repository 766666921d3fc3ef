"""Running the HTTP app: in the foreground (`cartwise serve`) or in a background thread.

Where it sits: the outermost serving layer, around `serving.app.create_app`.
The background form serves the demo and the tests over a real loopback socket.
"""
from __future__ import annotations

import socket
import threading
import time

import uvicorn

#: BLAS threads while serving. A request's matrix products are small (the ranker's [500, 47] x [47, 128],
#: the content source's similarity row); with OpenBLAS's default of one thread per core, the threads spin
#: for the cores whenever anything else runs: the ranker's NumPy forward pass took p50 0.29 / p90 29 ms
#: on this 2-core machine beside one busy process, 0.36 / 0.41 ms with one thread (/tmp profile, 2026-11-27).
SERVING_BLAS_THREADS = 1


def limit_blas_threads(threads: int = SERVING_BLAS_THREADS):
    """Limit every loaded BLAS library to `threads` threads (threadpoolctl) for a serving process.

    Returns:
        The limiter; `.restore_original_limits()` undoes it (the background server does on exit, so a
        test or demo process that trains afterwards keeps its threads).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads, user_api="blas")


def freeze_loaded_objects() -> None:
    """Collect, then move every object alive now out of the garbage collector's reach (`gc.freeze`).

    A loaded bundle holds millions of long-lived Python objects at 1M items
    (catalog dictionaries, id strings); each full collection walks them all:
    one 300 ms pause in a benchmark run at 1M items, a p99 of 110 ms instead
    of ~15. Called once before a server starts serving; after each hot swap,
    :func:`refreeze_after_swap`.
    """
    import gc

    gc.collect()
    gc.freeze()


def refreeze_after_swap() -> None:
    """After a hot swap has drained the old bundle: if objects were frozen, unfreeze them, collect (the old
    bundle's reference cycles: its lru cache and TensorFlow objects hold cycles, which a frozen generation
    would keep forever) and freeze what is alive again. One full collection per swap, on the swapping
    thread (about 0.3 s at 1M items)."""
    import gc

    if gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()
        gc.freeze()


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BackgroundServer:
    """uvicorn serving an app on a loopback port in a thread (the demo, tests, benchmarks).

    Args:
        app: an ASGI app.
        host: bind address.
        port: port, or None for a free one.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None):
        self.host, self.port = host, port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "BackgroundServer":
        freeze_loaded_objects()
        self._blas = limit_blas_threads()
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.server.should_exit = True
                self._blas.restore_original_limits()  # __exit__ will not run
                raise RuntimeError(f"server did not start on {self.url}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self._blas.restore_original_limits()
