"""Running the emulator under uvicorn: in a background thread, or in the foreground for the CLI."""

from __future__ import annotations

import logging
import socket
import threading
from types import TracebackType
from typing import Any

from airflow_provider_seedream.emulator.client import EmulatorClient
from airflow_provider_seedream.emulator.config import EmulatorConfig

log = logging.getLogger(__name__)

_GRACEFUL_SHUTDOWN_SECONDS = 2


def bind_socket(host: str, port: int) -> socket.socket:
    """Return a listening-ready TCP socket bound to ``host:port`` (``port=0`` picks a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def base_url(host: str, port: int) -> str:
    """Return ``http://host:port``, with brackets around an IPv6 host."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _uvicorn_config(config: EmulatorConfig | None, **options: Any) -> Any:
    import uvicorn

    from airflow_provider_seedream.emulator.app import create_app

    return uvicorn.Config(
        create_app(config),
        http="h11",
        lifespan="off",
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
        **options,
    )


class EmulatorServer:
    """An emulator served by uvicorn in a background thread; a context manager.

    The control methods (:meth:`configure`, :meth:`stats`, :meth:`images`, :meth:`reset`)
    go over HTTP through :attr:`client`, exactly as for an emulator in another process.

    :param config: the knobs at start (and after each reset).
    :param host: the interface to listen on.
    :param port: the port; ``0`` picks a free one.
    :param log_level: uvicorn's log level; ``None`` leaves logging as it is configured.
    :param startup_timeout: seconds to wait for the server to answer.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        self.config = config or EmulatorConfig()
        self.host = host
        self.port = port
        self.log_level = log_level
        self.startup_timeout = startup_timeout
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._client: EmulatorClient | None = None

    @property
    def url(self) -> str:
        """The base URL, such as ``http://127.0.0.1:54321`` (known once started)."""
        if self._client is None:
            raise RuntimeError("the emulator is not started")
        return self._client.url

    @property
    def client(self) -> EmulatorClient:
        """The control API client of this server."""
        if self._client is None:
            raise RuntimeError("the emulator is not started")
        return self._client

    @property
    def running(self) -> bool:
        """Whether the server thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> EmulatorServer:
        """Start serving and wait until the health endpoint answers."""
        import uvicorn

        if self.running:
            return self
        self._socket = bind_socket(self.host, self.port)
        self.port = self._socket.getsockname()[1]
        self._server = uvicorn.Server(
            _uvicorn_config(self.config, log_config=None, log_level=self.log_level, access_log=False)
        )
        self._thread = threading.Thread(target=self._serve, name=f"seedream-emulator-{self.port}", daemon=True)
        self._thread.start()
        self._client = EmulatorClient(base_url(self.host, self.port))
        try:
            self._client.wait_ready(self.startup_timeout, is_alive=self._thread.is_alive)
        except Exception:
            self.stop()
            raise
        log.info("Seedream emulator serving at %s", self.url)
        return self

    def _serve(self) -> None:
        assert self._server is not None and self._socket is not None
        self._server.run(sockets=[self._socket])

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit, wait for the thread and close the socket."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
        self._thread = None
        self._server = None
        self._socket = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Change knobs at run time; see :meth:`EmulatorClient.configure`."""
        return self.client.configure(**knobs)

    def get_config(self) -> dict[str, Any]:
        """Return the current knobs."""
        return self.client.get_config()

    def stats(self) -> dict[str, Any]:
        """Return the counters since the last reset."""
        return self.client.stats()

    def images(self) -> list[dict[str, Any]]:
        """Return the metadata of the images generated since the last reset."""
        return self.client.images()

    def reset(self) -> None:
        """Clear counters, images and scripts and restore the knobs given at start."""
        self.client.reset()


def serve_forever(config: EmulatorConfig, host: str, port: int, log_level: str = "info") -> None:
    """Serve in the foreground until interrupted, printing one line with the URL when ready.

    :param config: the knobs at start.
    :param host: the interface to listen on.
    :param port: the port; ``0`` picks a free one.
    :param log_level: uvicorn's log level.
    """
    import uvicorn

    sock = bind_socket(host, port)
    url = base_url(host, sock.getsockname()[1])

    class _AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                print(f"Seedream emulator ready at {url}", flush=True)

    server = _AnnouncingServer(_uvicorn_config(config, log_level=log_level, access_log=log_level == "debug"))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
