"""Resumable sessions, sans I/O: a secret token per JSON client that gets its name back.

The welcome gives each JSON client a token. A client that reconnects with it (and the last
message id it saw) takes its name back at once, even from a ghost connection the server still
believes open, and is sent what it missed. After a connection ends, its session holds the name
for ``resume_window`` seconds, and private messages to that name wait in the session's own
stream, for its owner only.

Tokens are random (:func:`secrets.token_urlsafe`, 144 bits), never logged and kept only as
SHA-256 digests; each resume replaces the token, so a token copied off the wire is good for
one resume at most.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from .peer import Peer

__all__ = ["MAX_TOKEN_LENGTH", "Session", "Sessions", "digest_of"]

#: Names a session remembers as its own (a rename flood is flood-controlled anyway).
_NAMES_KEPT: Final = 16

#: The longest token a client may present (ours are 24 characters).
MAX_TOKEN_LENGTH: Final = 64


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


def digest_of(token: str) -> bytes | None:
    """What a session is found by (its token's SHA-256), or None if ``token`` cannot be one."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    return _digest(token)


class Session:
    """One resumable identity: its name, room, current connection and private stream."""

    __slots__ = ("digest", "expires_at", "floor", "key", "name", "names", "peer", "room")

    def __init__(self, digest: bytes, key: str, name: str, room: str, peer: Peer | None) -> None:
        self.digest = digest
        #: The history stream of its private messages.
        self.key = key
        self.name = name
        #: Every name it had (the last few): its own messages are not replayed to it.
        self.names: tuple[str, ...] = (name,)
        self.room = room
        #: The connection holding it, or None while it waits to be resumed.
        self.peer = peer
        #: When a session without a connection ends (monotonic clock).
        self.expires_at: float | None = None
        #: The newest id when it was first welcomed, or the last id of its latest resume:
        #: the client had everything up to there, so a resume replays nothing older.
        self.floor = 0


class Sessions:
    """Every session, by token digest and by name key; bounded.

    Args:
        limit: The most sessions without a connection kept at once; past it the one that
            would expire first goes first.
        token: Makes a new token (tests pass a predictable one).
    """

    def __init__(self, limit: int, token: Callable[[], str] | None = None) -> None:
        self._limit = limit
        self._token = token if token is not None else lambda: secrets.token_urlsafe(18)
        self._by_digest: dict[bytes, Session] = {}
        self._by_name: dict[str, Session] = {}
        # Sessions without a connection, soonest to expire first.
        self._waiting: OrderedDict[Session, None] = OrderedDict()
        self._counter = 0

    def __len__(self) -> int:
        return len(self._by_digest)

    @property
    def waiting(self) -> int:
        """Sessions without a connection, holding their names."""
        return len(self._waiting)

    def open(self, peer: Peer, key: str, room: str) -> tuple[Session, str]:
        """A new session for ``peer``, named with key ``key``, in ``room``; return it and
        its token."""
        self._counter += 1
        token = self._token()
        session = Session(_digest(token), f"@{self._counter}", peer.name, room, peer)
        self._by_digest[session.digest] = session
        self._by_name[key] = session
        return session, token

    def adopt(
        self, digest: bytes, key: str, name: str, names: tuple[str, ...], room: str, floor: int
    ) -> Session:
        """Take in a session another server of the cluster opened (it is waiting, without a
        connection, until :meth:`attach`)."""
        self._counter += 1
        session = Session(digest, f"@{self._counter}", name, room, None)
        session.names = names[-_NAMES_KEPT:] or (name,)
        session.floor = floor
        self._by_digest[digest] = session
        self._by_name[key] = session
        return session

    def find(self, token: str) -> Session | None:
        """The session ``token`` opens, or None (unknown, expired, or not a token)."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        return self._by_digest.get(_digest(token))

    def renew(self, session: Session) -> str:
        """Replace the token of ``session`` (on each resume); return the new one."""
        del self._by_digest[session.digest]
        token = self._token()
        session.digest = _digest(token)
        self._by_digest[session.digest] = session
        return token

    def holder(self, key: str) -> Session | None:
        """The session holding the name with key ``key``, if any."""
        return self._by_name.get(key)

    def rename(self, session: Session, old_key: str, new_key: str, name: str) -> None:
        """The owner of ``session`` is now called ``name``."""
        if self._by_name.get(old_key) is session:
            del self._by_name[old_key]
        self._by_name[new_key] = session
        session.name = name
        session.names = (*session.names[-(_NAMES_KEPT - 1) :], name)

    def attach(self, session: Session, peer: Peer) -> None:
        """``peer`` holds ``session`` from now on."""
        session.peer = peer
        session.expires_at = None
        self._waiting.pop(session, None)

    def detach(self, session: Session, expires_at: float) -> list[Session]:
        """``session`` lost its connection: it waits until ``expires_at``.

        Returns:
            Sessions pushed out by the bound (end them as expired).
        """
        session.peer = None
        session.expires_at = expires_at
        self._waiting[session] = None
        pushed = []
        while len(self._waiting) > self._limit:
            oldest, _ = self._waiting.popitem(last=False)
            pushed.append(oldest)
        return pushed

    def expired(self, now: float) -> list[Session]:
        """Remove and return the waiting sessions whose time is up."""
        done = []
        for session in self._waiting:
            if session.expires_at is not None and session.expires_at <= now:
                done.append(session)
            else:
                break  # in expiry order: all windows are the same length
        for session in done:
            del self._waiting[session]
        return done

    def end(self, session: Session, key_of: Callable[[str], str]) -> None:
        """Forget ``session`` (expired, or closed on purpose)."""
        self._by_digest.pop(session.digest, None)
        self._waiting.pop(session, None)
        key = key_of(session.name)
        if self._by_name.get(key) is session:
            del self._by_name[key]
        session.peer = None
