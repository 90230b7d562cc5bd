"""The web front door of a chat hub: a chat page and a WebSocket, on one HTTP port.

``pip install 'chatcast[web]'`` (it needs the ``websockets`` library)::

    async with BroadcastServer("0.0.0.0", 8080, token=...) as server, \\
               WebGateway(server, port=8081):
        await server.serve_forever()

``http://HOST:8081/`` serves the chat page; ``/ws`` is the WebSocket. A browser is a member
like any TCP client: the same rooms, names, commands, limits, flood control, slow-consumer
policy and statistics. The WebSocket carries the JSON mode of ``docs/protocol.md``, one frame
per message, so any WebSocket client can speak it (``docs/web.md``).
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib.resources
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

try:
    from websockets.datastructures import Headers
    from websockets.http11 import Request, Response
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError("chatcast.web needs websockets: pip install 'chatcast[web]'") from exc

from ._web_connection import Door, WebConnection
from .server import BroadcastServer

__all__ = ["CONTENT_SECURITY_POLICY", "WebGateway", "WebStatistics"]

log = logging.getLogger("chatcast.web")

#: The page's Content-Security-Policy: script, style and connections from its own origin only
#: (no inline script, no CDN, no other site), and it cannot be framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class WebStatistics:
    """A snapshot of a gateway's counters (:meth:`WebGateway.statistics`).

    The chat itself (messages, bytes, slow consumers, ...) is counted with the TCP clients in
    :meth:`BroadcastServer.statistics`; these count the web port's own work.

    Attributes:
        clients: WebSocket members now.
        requests: Connections accepted (page, files and WebSockets).
        upgrades: WebSockets opened.
        refused: Connections turned away because ``max_clients`` were already opening.
        bad_origin: WebSocket handshakes refused for their ``Origin``.
        timeouts: Connections dropped for opening too slowly or saying no hello in time.
    """

    clients: int
    requests: int
    upgrades: int
    refused: int
    bad_origin: int
    timeouts: int


class WebGateway:
    """Serves the chat page and a WebSocket for ``server`` on one more port.

    Args:
        server: The hub the browsers join (started before the gateway).
        host: Address to listen on; defaults to the server's.
        port: Port to listen on; 0 picks a free one (read it back from :attr:`port`).
        origins: Origins allowed to open the WebSocket besides the page's own (same host and
            port as the request's ``Host``), e.g. ``["https://chat.example.org"]``. A handshake
            without ``Origin`` (not from a browser) is allowed: the check protects browsers
            from other sites (cross-site WebSocket hijacking), not the server from programs;
            the token does that.
        max_message_bytes: The largest WebSocket message a client may send; a bigger one
            closes the connection with code 1009 and a reason. Defaults to the server's
            ``max_line_bytes``.

    TLS, the token and every limit are the server's: with ``ssl`` set the page is served over
    ``https://`` and the socket is ``wss://`` with the same certificate; an upgraded WebSocket
    counts against ``max_clients`` and ``max_per_address`` as a TCP client does; at most
    ``max_clients`` (1024 without a limit) connections may be opening at once (HTTP requests
    for the page and WebSocket handshakes), each for at most ``ssl_handshake_timeout``
    seconds from its accept (its TLS handshake included), and at most ``max_handshakes`` TLS
    handshakes run at once, as on the TCP port; a WebSocket must say hello within
    ``auth_timeout``.

    Raises:
        ValueError: ``port`` or ``max_message_bytes`` is out of range.
    """

    def __init__(
        self,
        server: BroadcastServer,
        host: str | None = None,
        port: int = 8081,
        *,
        origins: Sequence[str] = (),
        max_message_bytes: int | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0 to 65535, got {port}")
        if max_message_bytes is not None and not 1 <= max_message_bytes <= 2**24:
            raise ValueError(f"max_message_bytes must be 1 to {2**24}, got {max_message_bytes}")
        for origin in origins:
            if not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"an origin is scheme://host[:port], got {origin!r}")
        self.server = server
        self.host = host if host is not None else server.host
        self.origins = frozenset(origin.lower() for origin in origins)
        self.max_message_bytes = max_message_bytes or server.max_line_bytes
        self._port = port
        self._files = _load_static()
        self._listener: asyncio.Server | None = None
        self._door: Door | None = None

    @property
    def port(self) -> int:
        """The port the gateway listens on (the real one once started with port 0)."""
        return self._port

    @property
    def url(self) -> str:
        """The page's address, e.g. ``http://127.0.0.1:8081/``."""
        host = self.host or "127.0.0.1"
        host = "127.0.0.1" if host == "0.0.0.0" else "[::1]" if host == "::" else host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        scheme = "https" if self.server.ssl is not None else "http"
        return f"{scheme}://{host}:{self._port}/"

    async def start(self) -> None:
        """Start listening.

        Raises:
            RuntimeError: Already started, or the server is not serving.
            OSError: The address could not be bound.
        """
        if self._listener is not None:
            raise RuntimeError("gateway already started")
        server = self.server
        if not server.is_serving:
            raise RuntimeError("start the server before its web gateway")
        config = server.config
        door = self._door = Door(
            hub=server._hub,
            admit=server._admit,
            lost=server._connection_lost,
            route=self._route,
            allowed=self._allowed,
            max_message_bytes=self.max_message_bytes,
            # Opening connections are cheap (TLS, if any, is done by then) but each browser
            # opens several at once for the page: allow as many as there may be clients.
            max_pending=config.max_clients or 1024,
            open_timeout=config.ssl_handshake_timeout,
            hello_timeout=config.auth_timeout,
            close_timeout=config.close_timeout,
        )
        loop = asyncio.get_running_loop()
        ssl = server.ssl
        # As BroadcastServer: TLS is started by us on each accepted connection, at most
        # max_handshakes at once; on uvloop (which reads before the TLS layer could take
        # over), by create_server, before the connection is counted.
        in_accept = ssl is not None and not isinstance(loop, asyncio.BaseEventLoop)
        if ssl is not None and not in_accept:
            door.ssl = ssl
            door.max_handshakes = config.max_handshakes
        self._listener = await loop.create_server(
            lambda: WebConnection(door),
            self.host,
            self._port,
            ssl=ssl if in_accept else None,
            ssl_handshake_timeout=config.ssl_handshake_timeout if in_accept else None,
            backlog=1024,
        )
        self._port = self._listener.sockets[0].getsockname()[1]
        self.server._web_port = self._port  # LAN discovery lists the page too
        log.info("web page and WebSocket on %s", self.url)

    def close(self) -> None:
        """Stop listening and close this gateway's WebSockets (the server keeps the rest).

        Idempotent; await :meth:`wait_closed` for the end.
        """
        if self._listener is None or not self._listener.is_serving():
            return
        if self.server._web_port == self._port:
            self.server._web_port = None
        self._listener.close()
        hub = self.server._hub
        if hub.closing:
            return
        from .message import CLOSING, Message

        for peer in list(hub.peers):
            if isinstance(peer, WebConnection) and peer.door is self._door:
                hub.disconnect(peer, Message("web gateway closing", kind=CLOSING))

    async def wait_closed(self) -> None:
        """Wait until the listener is closed and TLS handshakes in progress have ended."""
        if self._listener is not None:
            await self._listener.wait_closed()
        if self._door is not None and self._door.tasks:
            await asyncio.wait(list(self._door.tasks), timeout=self.server.close_timeout)

    async def __aenter__(self) -> WebGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    def statistics(self) -> WebStatistics:
        """Return a snapshot of the counters."""
        door = self._door
        if door is None:
            return WebStatistics(0, 0, 0, 0, 0, 0)
        clients = sum(
            1
            for peer in door.hub.peers
            if isinstance(peer, WebConnection) and peer.door is door and not peer.closing
        )
        return WebStatistics(
            clients, door.requests, door.upgrades, door.refused, door.bad_origin, door.timeouts
        )

    # -- HTTP --------------------------------------------------------------------------------

    def _allowed(self, request: Request) -> bool:
        """The WebSocket handshake's ``Origin``: absent, listed, or the page's own."""
        headers = request.headers
        origins = headers.get_all("Origin")
        if not origins:
            return True
        if len(origins) > 1:
            return False
        origin = origins[0].lower()
        if origin in self.origins:
            return True
        scheme = "https" if self.server.ssl is not None else "http"
        hosts = headers.get_all("Host")
        return len(hosts) == 1 and origin == f"{scheme}://{hosts[0].lower()}"

    def _route(self, request: Request) -> Response:
        """The page, its files, ``/info.json``; 404 for anything else."""
        path = request.path.partition("?")[0]
        if path == "/":
            path = "/index.html"
        if path == "/info.json":
            server = self.server
            info = {
                "token": server.config.token is not None,
                "room": server.default_room,
                "max_message_bytes": self.max_message_bytes,
            }
            return _response(200, "application/json", json.dumps(info).encode())
        found = self._files.get(path)
        if found is None:
            return _response(404, "text/plain; charset=utf-8", b"not found\n")
        content_type, body = found
        return _response(200, content_type, body)


def _response(status: int, content_type: str, body: bytes) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            ("Cache-Control", "no-cache"),
            ("Connection", "close"),
        ]
    )
    reason = {200: "OK", 404: "Not Found"}.get(status, "")
    return Response(status, reason, headers, body)


def _load_static() -> dict[str, tuple[str, bytes]]:
    """The page and its files, shipped in the package (``chatcast/static``)."""
    files: dict[str, tuple[str, bytes]] = {}
    folder = importlib.resources.files("chatcast") / "static"
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            files["/" + entry.name] = (_TYPES[suffix], entry.read_bytes())
    return files
