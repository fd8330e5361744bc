#!/usr/bin/env python3
"""A tiny versioned HTTP service that quorum.rollout's demo and tests release.

GET /health answers 200 {"status": "ok", "version": "<VERSION>"} where VERSION is the file
beside this script. A release can be made broken on purpose for some CPU kinds: when the
file BROKEN_ON beside the script lists the --cpu this instance runs on, /health answers 500.
Standard library only.
"""

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cpu", default="")
    args = ap.parse_args()
    version = (HERE / "VERSION").read_text().strip()
    broken = HERE / "BROKEN_ON"
    broken_on = broken.read_text().split() if broken.exists() else []
    healthy = args.cpu not in broken_on

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):  # quiet
            pass

        def do_GET(self):
            if self.path == "/health":
                body = {"status": "ok" if healthy else "broken", "version": version}
                if not healthy:
                    body["error"] = f"release {version} does not run on {args.cpu}"
                self._reply(200 if healthy else 500, body)
            else:
                self._reply(200, {"service": "demo", "version": version})

        def _reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    ThreadingHTTPServer((args.bind, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
