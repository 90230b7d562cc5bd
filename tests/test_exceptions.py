"""Tier 1: the exception tree documented in chatcast.exceptions."""

from __future__ import annotations

import re

import pytest

from chatcast import exceptions
from chatcast.exceptions import (
    AuthenticationError,
    BackplaneError,
    ChannelClosed,
    ChatcastError,
    ConnectionClosed,
    InvalidFrame,
    LineTooLong,
    MessageTooLong,
    ProtocolError,
    Refused,
    StoreError,
)

#: Each exception and its direct bases, as the tree in the module docstring draws it.
TREE: dict[type[Exception], tuple[type[Exception], ...]] = {
    ChatcastError: (Exception,),
    ConnectionClosed: (ChatcastError,),
    ChannelClosed: (ChatcastError,),
    MessageTooLong: (ChatcastError, ValueError),
    ProtocolError: (ChatcastError,),
    LineTooLong: (ProtocolError,),
    InvalidFrame: (ProtocolError,),
    AuthenticationError: (ChatcastError,),
    Refused: (ChatcastError,),
    BackplaneError: (ChatcastError,),
    StoreError: (ChatcastError,),
}


def test_tree_covers_every_exported_exception() -> None:
    """Every exception in exceptions.__all__ is in the tree this test checks, and vice versa."""
    assert {getattr(exceptions, name) for name in exceptions.__all__} == set(TREE)


@pytest.mark.parametrize(("cls", "bases"), TREE.items(), ids=lambda v: getattr(v, "__name__", ""))
def test_direct_bases(cls: type[Exception], bases: tuple[type[Exception], ...]) -> None:
    """Each exception derives from exactly the classes the documented tree gives it."""
    assert cls.__bases__ == bases


@pytest.mark.parametrize("cls", TREE, ids=lambda cls: cls.__name__)
def test_everything_is_a_chatcast_error(cls: type[Exception]) -> None:
    """`except ChatcastError` catches every exception chatcast defines."""
    assert issubclass(cls, ChatcastError)


@pytest.mark.parametrize("cls", TREE, ids=lambda cls: cls.__name__)
def test_docstring_tree_names_every_class(cls: type[Exception]) -> None:
    """The tree drawn in the module docstring names every exception class."""
    assert exceptions.__doc__ is not None
    drawn = re.compile(rf"^ +(?:[│ ]*[├└]── )?{cls.__name__}\b", re.MULTILINE)
    assert drawn.search(exceptions.__doc__)


def test_protocol_errors() -> None:
    """LineTooLong and InvalidFrame are ProtocolErrors, and neither is the other."""
    assert issubclass(LineTooLong, ProtocolError)
    assert issubclass(InvalidFrame, ProtocolError)
    assert not issubclass(LineTooLong, InvalidFrame)
    assert not issubclass(InvalidFrame, LineTooLong)


def test_closed_vs_closed_by_us() -> None:
    """ConnectionClosed (the peer ended it) and ChannelClosed (we did) are separate branches."""
    assert not issubclass(ConnectionClosed, ChannelClosed)
    assert not issubclass(ChannelClosed, ConnectionClosed)
    assert not issubclass(ConnectionClosed, OSError)


def test_connection_closed_reason() -> None:
    """ConnectionClosed carries its reason, as attribute and message, with a default."""
    error = ConnectionClosed("server shutting down")
    assert error.reason == "server shutting down"
    assert str(error) == "server shutting down"
    assert ConnectionClosed().reason == "connection closed"
    assert str(ConnectionClosed()) == "connection closed"


def test_connection_closed_keeps_os_error_as_cause() -> None:
    """Raised `from` an OSError, ConnectionClosed keeps it as __cause__."""
    cause = ConnectionResetError(104, "Connection reset by peer")
    with pytest.raises(ConnectionClosed) as info:
        raise ConnectionClosed("connection reset") from cause
    assert info.value.__cause__ is cause


def test_message_too_long() -> None:
    """MessageTooLong carries size and limit, says both, and is caught as ValueError."""
    error = MessageTooLong(70000, 65507)
    assert (error.size, error.limit) == (70000, 65507)
    assert str(error) == "message of 70000 bytes is over the limit of 65507 bytes"
    with pytest.raises(ValueError, match="70000"):
        raise error


def test_line_too_long() -> None:
    """LineTooLong carries the limit and says it."""
    error = LineTooLong(65536)
    assert error.limit == 65536
    assert str(error) == "line longer than 65536 bytes"


def test_plain_messages() -> None:
    """The exceptions without extra fields take a plain message."""
    for cls in (ChannelClosed, ProtocolError, InvalidFrame, AuthenticationError, ChatcastError):
        assert str(cls("why")) == "why"
