"""Chunker speed: pyfastcdc vs fastcdc (PyPI) on 256 MiB of random + repeated 1 MiB blocks.

    .venv/bin/pip install fastcdc   # pyfastcdc is an agent dependency; fastcdc only for this comparison
    .venv/bin/python bench/chunkers.py [--size-mib 256]

CPU seconds of the best of 3 runs (time.process_time), so the figure is MB/s per core. The numbers
chose the agent's chunker (agent/pyproject.toml).
"""

from __future__ import annotations

import argparse
import hashlib
import mmap
import os
import random
import tempfile
import time
from collections.abc import Callable

MIN, AVG, MAX = 16 << 10, 64 << 10, 256 << 10


def payload(path: str, size: int) -> None:
    rnd, block = random.Random(1), os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20) if rnd.random() < 0.5 else block)


def pyfastcdc_cut(path: str, digest: bool) -> int:
    import pyfastcdc

    cdc = pyfastcdc.FastCDC(AVG, min_size=MIN, max_size=MAX)
    with open(path, "rb", buffering=0) as f:
        return sum(1 for c in cdc.cut_stream(f) if not digest or hashlib.sha256(c.data).digest())


def fastcdc_cut(path: str, digest: bool) -> int:
    from fastcdc import fastcdc

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view, n = memoryview(m), 0
        for c in fastcdc(m, MIN, AVG, MAX):
            if digest:
                hashlib.sha256(view[c.offset:c.offset + c.length]).digest()
            n += 1
        view.release()
        return n


def best(fn: Callable[[], int]) -> tuple[int, float]:
    runs = []
    for _ in range(3):
        start = time.process_time()
        n = fn()
        runs.append(time.process_time() - start)
    return n, min(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=256)
    size = ap.parse_args().size_mib << 20
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "payload.bin")
        payload(path, size)
        for name, fn in (("pyfastcdc", pyfastcdc_cut), ("fastcdc", fastcdc_cut)):
            for digest in (False, True):
                try:
                    n, cpu = best(lambda fn=fn, digest=digest: fn(path, digest))
                except ImportError:
                    print(f"{name}: not installed")
                    break
                print(f"{name:10} {'+ sha256' if digest else 'cut only':9} {n:6} chunks  {size / cpu / 1e6:7.0f} MB/s "
                      "per core")


if __name__ == "__main__":
    main()
