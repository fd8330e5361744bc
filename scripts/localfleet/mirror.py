"""A real HTTP mirror for tests, demos and benchmarks: serves a directory over HTTP/1.1 with
Range support, counts the bytes it serves per path in a JSON file, and can be told to cut a
connection after N bytes (`.cut` files) or to cap its own egress (--rate bytes/s).

Misbehaviour on demand, by side files next to a (possibly absent) path P:

* `P.cut` holding N: send the first N bytes of P, then drop the connection (once).
* `P.status`: answer with this instead of P, every time. First line: the status code; then
  optional `Name: value` header lines; a blank line; the rest is the body. E.g. "500\n", or
  "200\nContent-Type: text/html\n\n<html>...</html>".
* `P.endless` holding a byte cap (default 256 MiB): send P, then zeros up to the cap, with no
  Content-Length (the body ends when the connection closes): an endless-data attack.
* `P.fail` holding "N STATUS": answer STATUS (e.g. 503) to the next N requests of P, then serve it.
* `P.trickle` holding "SECONDS [SKIP]": after the first SKIP requests of P (default 0) are served
  normally, send P's headers and then one byte every SECONDS: a slow-retrieval attack.

Zone links (bench/zones.py): with `--zone NAME=B`, a request for `/zone/NAME/P` is served as `P`
through NAME's own cap of B bytes/s, shared by every connection of that zone (the zone's
downlink), as well as through --rate (the origin's uplink); `--timeline FILE` gets a JSON line
of the bytes served so far per zone every 0.25 s.

Run: python scripts/localfleet/mirror.py --bind 127.0.0.1 --port 8000 --root DIR [--stats FILE] [--rate B]
     [--zone NAME=B ...] [--timeline FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Bucket:
    """A token bucket of `rate` bytes/s (0: no cap), bursts up to `burst` seconds' worth, shared
    by the threads that consume from it."""

    def __init__(self, rate: int, burst: float = 1.0) -> None:
        self.rate, self.tokens, self.t = rate, 0.0, time.monotonic()
        self.burst = rate * burst
        self.lock = threading.Lock()

    def consume(self, n: int) -> None:
        if not self.rate:
            return
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate) - n
            self.t = now
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait:
            time.sleep(wait)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--stats", help="JSON file with bytes served per path, rewritten after each request")
    ap.add_argument("--rate", type=int, default=0, help="egress cap in bytes/s for the whole mirror")
    ap.add_argument("--zone", action="append", default=[], metavar="NAME=B",
                    help="serve /zone/NAME/... through a cap of B bytes/s shared by that zone (repeatable)")
    ap.add_argument("--timeline", help="JSON lines of bytes served per zone, every 0.25 s")
    args = ap.parse_args()
    root = Path(args.root).resolve()
    served: dict[str, int] = {}
    requests_seen: dict[str, int] = {}
    lock = threading.Lock()
    origin = Bucket(args.rate)
    # A link, not a mirror: bursts of 50 ms at most.
    zones = {name: Bucket(int(rate), 0.05) for name, _, rate in (z.partition("=") for z in args.zone)}
    zone_bytes = dict.fromkeys(zones, 0)

    def throttle(n: int, zone: str | None = None) -> None:
        if zone is not None:
            zones[zone].consume(n)
            with lock:
                zone_bytes[zone] += n
        origin.consume(n)

    if args.timeline:
        def timeline() -> None:
            with open(args.timeline, "a") as out:
                while True:
                    with lock:
                        line = json.dumps({"t": time.time(), **zone_bytes})
                    out.write(line + "\n")
                    out.flush()
                    time.sleep(0.25)
        threading.Thread(target=timeline, daemon=True).start()

    def record(rel: str, sent: int) -> None:
        if "/chunks/" in rel:  # delta releases: one counter for all chunks (thousands of paths otherwise)
            rel = rel.split("/chunks/")[0] + "/chunks/"
        with lock:
            served[rel] = served.get(rel, 0) + sent
            if args.stats:
                tmp = args.stats + ".tmp"
                Path(tmp).write_text(json.dumps(served))
                os.replace(tmp, args.stats)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self.do_GET(head=True)

        def do_GET(self, head: bool = False) -> None:
            rel = self.path.split("?", 1)[0].lstrip("/")
            zone = None
            if rel.startswith("zone/"):
                zone, _, rel = rel[len("zone/"):].partition("/")
                if zone not in zones:
                    zone, rel = None, "\0"  # an unknown zone: not found
            path = (root / rel).resolve()
            inside = root in path.parents
            status_file = path.with_name(path.name + ".status")
            if inside and status_file.is_file():
                return self._canned(status_file.read_bytes(), head)
            fail_file = path.with_name(path.name + ".fail")
            if inside and fail_file.is_file() and self._fail_once(fail_file, head):
                return
            trickle_file = path.with_name(path.name + ".trickle")
            if inside and path.is_file() and trickle_file.is_file() and not head:
                seconds, _, skip = trickle_file.read_text().strip().partition(" ")
                with lock:
                    count = requests_seen[rel] = requests_seen.get(rel, 0) + 1
                if count > int(skip or 0):
                    return self._trickle(path, rel, float(seconds))
            endless_file = path.with_name(path.name + ".endless")
            if inside and path.is_file() and endless_file.is_file():
                return self._endless(path, rel, int(endless_file.read_text().strip() or 256 << 20), head)
            if (not inside and path != root) or not path.is_file():
                body = b"not found"
                self.send_response(404 if path != root else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)
                return
            size = path.stat().st_size
            start, end, status = 0, size - 1, 200
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                first, _, last = rng[6:].partition("-")
                start = int(first or 0)
                end = int(last) if last else size - 1
                status = 206
            cut_file = path.with_name(path.name + ".cut")
            cut = int(cut_file.read_text()) if cut_file.exists() else None
            if cut is not None:
                cut_file.unlink()  # cut once
            self.send_response(status)
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if head:
                return
            sent = 0
            with open(path, "rb") as fh:
                fh.seek(start)
                remaining = end - start + 1
                while remaining > 0:
                    chunk = fh.read(min(65536, remaining))
                    if not chunk:
                        break
                    if cut is not None and sent + len(chunk) > cut:
                        chunk = chunk[: cut - sent]
                    throttle(len(chunk), zone)
                    try:
                        self.wfile.write(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        break
                    sent += len(chunk)
                    remaining -= len(chunk)
                    if cut is not None and sent >= cut:
                        self.close_connection = True
                        break
            record(rel, sent)
            if cut is not None:
                self.connection.close()

        def _canned(self, spec: bytes, head: bool) -> None:
            top, _, body = spec.partition(b"\n\n")
            lines = top.decode().splitlines()
            status, headers = int(lines[0].strip()), [line.split(":", 1) for line in lines[1:] if ":" in line]
            body = body or f"mirror answers {status}\n".encode()
            self.send_response(status)
            for name, value in headers:
                self.send_header(name.strip(), value.strip())
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _fail_once(self, fail_file: Path, head: bool) -> bool:
            with lock:
                try:
                    count, _, status = fail_file.read_text().strip().partition(" ")
                except FileNotFoundError:
                    return False
                left = int(count)
                if left <= 0:
                    return False
                fail_file.write_text(f"{left - 1} {status}")
            self._canned(f"{status}\n".encode(), head)
            return True

        def _trickle(self, path: Path, rel: str, seconds: float) -> None:
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            sent = 0
            try:
                for byte in data:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    sent += 1
                    time.sleep(seconds)
            except (BrokenPipeError, ConnectionResetError):
                pass
            record(rel, sent)

        def _endless(self, path: Path, rel: str, cap: int, head: bool) -> None:
            self.close_connection = True
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            sent = 0
            if not head:
                data, zeros = path.read_bytes(), bytes(65536)
                try:
                    self.wfile.write(data)
                    sent = len(data)
                    while sent < cap:
                        self.wfile.write(zeros)
                        sent += len(zeros)
                except (BrokenPipeError, ConnectionResetError):
                    pass
            record(rel, sent)

    ThreadingHTTPServer((args.bind, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
