"""Running the app: :func:`run` (``modelgit serve``: uvicorn in the foreground) and
:class:`BackgroundServer` (uvicorn on a thread, for tests, benchmarks and notebooks)."""

from __future__ import annotations

import threading

__all__ = ["run", "BackgroundServer"]


def run(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``app`` until interrupted (Ctrl-C or SIGTERM: uvicorn finishes the open requests)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, ws="none")


class BackgroundServer:
    """``app`` served by uvicorn on a thread; ``port`` 0 takes a free port.

    Use as a context manager: ``with BackgroundServer(app) as server: server.url``.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                                     access_log=False, lifespan="on", ws="none")
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="modelgit-serve", daemon=True)
        self.host = host

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        # wait for the socket: uvicorn sets `started` once it listens (no timing assumed)
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server stopped while starting: see its log")
            self.thread.join(0.01)
        return self

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join()
