"""A hub's settings: one frozen, validated value (what ``BroadcastServer(...)`` was given).

Validation happens once, here, so that the server's constructor only stores what it checked
and the hub can read its settings without re-checking them. The TLS context and the backplane
are objects, not settings: the server keeps those itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from ..exceptions import InvalidFrame
from .commands import check_name
from .framing import DEFAULT_MAX_LINE_BYTES
from .history import HistoryLimits

__all__ = ["DEFAULT_WELCOME", "ServerConfig"]

#: The lab's greeting, sent as the first line of every connection.
DEFAULT_WELCOME: Final = "Selamat datang di Server..."

SlowConsumer = Literal["disconnect", "drop-oldest"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Everything :class:`~chatcast.server.BroadcastServer` takes but TLS and the backplane.

    The meaning of each field is documented on :class:`~chatcast.server.BroadcastServer`.

    Raises:
        ValueError: A value is out of range; the message names it and the allowed range.
    """

    host: str | None = "127.0.0.1"
    port: int = 8080
    welcome: str = DEFAULT_WELCOME
    default_room: str = "lobby"
    max_clients: int | None = 1000
    max_per_address: int | None = None
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_buffer_bytes: int = 1024 * 1024
    slow_consumer: SlowConsumer = "disconnect"
    line_timeout: float = 0.2
    join_grace: float = 0.5
    heartbeat_interval: float = 30.0
    heartbeat_timeout: float = 10.0
    idle_timeout: float | None = None
    keepalive: bool = True
    token: str | None = field(default=None, repr=False)
    op_token: str | None = field(default=None, repr=False)  # moderation (#14)
    auth_timeout: float = 5.0
    rate: float | None = None
    burst: float | None = None
    ssl_handshake_timeout: float = 10.0
    max_handshakes: int = 64
    close_timeout: float = 5.0
    reuse_port: bool = False
    notice_limit: int | None = 100
    history: HistoryLimits = field(default_factory=HistoryLimits)
    history_on_join: int = 20
    resume_window: float = 120.0
    max_sessions: int = 10_000

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if "\n" in self.welcome or "\r" in self.welcome:
            raise ValueError("welcome must be one line")
        try:
            check_name(self.default_room, "default_room")
        except InvalidFrame as exc:
            raise ValueError(str(exc)) from None
        for label, value in (
            ("max_clients", self.max_clients),
            ("max_per_address", self.max_per_address),
            ("notice_limit", self.notice_limit),
            ("max_handshakes", self.max_handshakes),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{label} must be >= 1 or None, got {value}")
        if self.max_line_bytes < 64:
            raise ValueError(f"max_line_bytes must be >= 64, got {self.max_line_bytes}")
        if self.max_buffer_bytes < self.max_line_bytes:
            raise ValueError(
                f"max_buffer_bytes ({self.max_buffer_bytes}) must be >= max_line_bytes "
                f"({self.max_line_bytes})"
            )
        if self.slow_consumer not in ("disconnect", "drop-oldest"):
            raise ValueError(
                f"slow_consumer must be 'disconnect' or 'drop-oldest', got {self.slow_consumer!r}"
            )
        for label, seconds in (
            ("line_timeout", self.line_timeout),
            ("join_grace", self.join_grace),
            ("heartbeat_interval", self.heartbeat_interval),
            ("heartbeat_timeout", self.heartbeat_timeout),
            ("auth_timeout", self.auth_timeout),
            ("ssl_handshake_timeout", self.ssl_handshake_timeout),
            ("close_timeout", self.close_timeout),
            ("idle_timeout", self.idle_timeout if self.idle_timeout is not None else 1.0),
        ):
            if not seconds > 0:
                raise ValueError(f"{label} must be > 0 seconds, got {seconds}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate must be > 0 messages/s or None, got {self.rate}")
        if self.burst is not None and not self.burst >= 1:
            raise ValueError(f"burst must be >= 1, got {self.burst}")
        if not isinstance(self.history, HistoryLimits):
            raise TypeError(f"history must be a HistoryLimits, got {self.history!r}")
        if not 0 <= self.history_on_join <= 500:
            raise ValueError(f"history_on_join must be in 0..500, got {self.history_on_join}")
        if not self.resume_window >= 0:
            raise ValueError(f"resume_window must be >= 0 seconds, got {self.resume_window}")
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {self.max_sessions}")
        if self.token is not None and not self.token:
            raise ValueError("token must not be empty (use None for no authentication)")
        if self.op_token is not None and (not self.op_token or self.op_token == self.token):
            # One token for both would make every member an operator.
            raise ValueError("op_token must not be empty, nor the same as token")

    @property
    def bucket(self) -> float:
        """The flood-control bucket size: ``burst``, or ``max(1, 2 * rate)`` by default."""
        if self.burst is not None:
            return self.burst
        return max(1.0, 2.0 * self.rate) if self.rate else 1.0

    @property
    def sweep_interval(self) -> float:
        """How often the timeouts are checked: often enough for the shortest of them."""
        return min(
            1.0,
            self.heartbeat_interval / 2,
            self.heartbeat_timeout / 2,
            self.auth_timeout / 2,
            (self.idle_timeout or 2.0) / 2,
        )
