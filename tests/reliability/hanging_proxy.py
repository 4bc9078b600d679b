"""A TCP proxy in front of an S3 server that can be made to hang: it accepts and reads, and never answers.

While forwarding, bytes go both ways unchanged. Once :meth:`HangingProxy.hang` is called, every
connection (new ones and those kept alive) still accepts what the client sends but nothing more
reaches the server or comes back, as an S3 endpoint behind a stuck load balancer behaves.
:meth:`HangingProxy.forward` makes new connections work again.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType


class HangingProxy:
    """Proxy ``127.0.0.1:<port>`` to ``upstream`` (``host``, ``port``)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._hanging = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.connections = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def hang(self) -> None:
        self._hanging.set()

    def forward(self) -> None:
        """Forward again; connections opened while hanging stay silent."""
        self._hanging.clear()

    def __enter__(self) -> HangingProxy:
        threading.Thread(target=self._accept, daemon=True, name="hanging-proxy").start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self._hanging.is_set():
            self._swallow(client)
            return
        try:
            server = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        with self._lock:
            self._sockets.append(server)
        threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()
        self._pipe(client, server)

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if self._hanging.is_set():
                    self._swallow(source)
                    return
                target.sendall(data)
        except OSError:
            pass
        finally:
            if not self._hanging.is_set():
                target.close()

    def _swallow(self, sock: socket.socket) -> None:
        """Read and drop whatever arrives; answer nothing, until the client gives up."""
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
