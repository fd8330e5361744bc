"""scripts/localfleet's port check, used by `make demo` before it starts anything: a port is busy
while a process listens on it, and free again as soon as that process closed it, even with its
connections still in TIME_WAIT (re-running the demo right after `make demo-stop` failed with
"addresses in use" for a minute)."""

from __future__ import annotations

import random
import socket

from scripts.localfleet.common import port_free


def test_a_listening_port_is_busy_and_a_closed_one_free_despite_time_wait() -> None:
    ip = f"127.{random.randint(20, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((ip, 0))
    server.listen()
    port = server.getsockname()[1]
    assert not port_free(ip, port)
    client = socket.create_connection((ip, port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: its end of the connection goes to TIME_WAIT
    client.close()
    server.close()
    assert port_free(ip, port)
