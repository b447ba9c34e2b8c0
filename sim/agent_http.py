"""The dark-agent simulator's wire: a threaded HTTP listener per VM and its request handler.

Each listener hands every request to an `answer` callable and writes back the `Reply` it gets, so
the guest state and faults stay in sim.agent; this module owns only sockets, threads and framing.
Request bodies are never logged.
"""

import contextlib
import json
import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

AGENT_VERSION = "0.19.0"
MAX_REQUEST_BYTES = 1 << 20
OVERSIZE_BYTES = 8 << 20


@dataclass(frozen=True)
class Reply:
    status: int
    body: object = None
    oversize: bool = False


# (method, path, body) -> the reply; None means drop the connection unanswered.
Answer = Callable[[str, str, bytes], Reply | None]


class GuestServer(ThreadingHTTPServer):
    daemon_threads = True
    answer: Answer
    vm_id: str

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the address with getfqdn(): a reverse-DNS lookup per VM
        # that can stall for seconds on a machine without DNS.
        socketserver.TCPServer.server_bind(self)
        # An IP server's address is (host, port, ...); typeshed allows a Unix socket path too.
        self.server_name, self.server_port = self.server_address[:2]  # type: ignore[assignment]


def start_listener(vm_id: str, address: str, port: int, answer: Answer) -> GuestServer:
    """Listen on (address, port) for one VM's guest API, serving from a daemon thread."""
    server = GuestServer((address, port), _GuestHandler)
    server.answer, server.vm_id = answer, vm_id
    threading.Thread(target=server.serve_forever, name=f"guest-{vm_id}", daemon=True).start()
    return server


def stop_listener(server: GuestServer) -> None:
    # Shutting the listening socket down refuses new connections at once and wakes the
    # serve loop, so shutdown() does not wait out its poll interval.
    with contextlib.suppress(OSError):
        server.socket.shutdown(socket.SHUT_RDWR)
    server.shutdown()
    server.server_close()


class _GuestHandler(BaseHTTPRequestHandler):
    """HTTP/1.0, one request per connection: a closed listener then refuses the very next call."""

    server: GuestServer
    timeout = 30  # a stalled client must not pin a thread forever
    server_version = f"dark-agent/{AGENT_VERSION}"
    sys_version = ""

    def do_GET(self) -> None:
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit() or int(length) > MAX_REQUEST_BYTES:
            self._send(Reply(413, {"error": "request body too large"}))
            return
        body = self.rfile.read(int(length))
        reply = self.server.answer(self.command, self.path, body)
        if reply is None:
            self.close_connection = True
        elif reply.oversize:
            self._send_oversize()
        else:
            self._send(reply)

    do_POST = do_GET

    def _send(self, reply: Reply) -> None:
        data = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_oversize(self) -> None:
        """Valid JSON of several MB and no Content-Length: only a bounded read stops it."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        chunk = b"A" * 65536
        try:
            self.wfile.write(b'{"ssh_pubkey": "ssh-ed25519 ')
            for _ in range(OVERSIZE_BYTES // len(chunk)):
                self.wfile.write(chunk)
            self.wfile.write(b' dark-agent"}')
        except OSError:
            pass  # the client stopped reading, as it should

    def log_message(self, format: str, *args: object) -> None:
        # The request line only (method, path, status): bodies are never logged.
        log.debug("guest %s: " + format, self.server.vm_id, *args)
