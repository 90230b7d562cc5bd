"""Server addresses as users write them: ``"host:port"``, ``"[::1]:8080"`` or ``(host, port)``.

Pure parsing and formatting for a client given several servers to fail over between
(:class:`~chatcast.client.BroadcastClient`'s ``servers``). No name is resolved here: a host is
checked for form only, and the connection attempt reports one that does not exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

__all__ = ["Address", "format_address", "parse_address", "parse_addresses"]

#: A server's address: host (a name, an IPv4 or an IPv6 address without brackets) and port.
Address = tuple[str, int]

_EXAMPLE: Final = 'write "HOST:PORT", "[IPv6]:PORT" or a (host, port) tuple'


def _check_port(port: object, value: object) -> int:
    if isinstance(port, str):
        if not port.isascii() or not port.isdigit():
            raise ValueError(f"server address {value!r}: port {port!r} is not a number")
        port = int(port)
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"server address {value!r}: port must be an int, got {port!r}")
    if not 0 < port <= 65535:
        raise ValueError(f"server address {value!r}: port must be in 1..65535, got {port}")
    return port


def _check_host(host: object, value: object) -> str:
    if not isinstance(host, str):
        raise TypeError(f"server address {value!r}: host must be a str, got {host!r}")
    if not host:
        raise ValueError(f"server address {value!r}: the host is empty ({_EXAMPLE})")
    if any(char.isspace() or not char.isprintable() for char in host) or "/" in host:
        raise ValueError(f"server address {value!r}: {host!r} is not a host name or address")
    if host.startswith("[") or host.endswith("]"):
        raise ValueError(f"server address {value!r}: brackets around a host only in a string")
    return host


def parse_address(value: str | tuple[str, int]) -> Address:
    """Return ``(host, port)`` for one server address.

    Args:
        value: ``"host:port"``, ``"[ipv6]:port"`` (an IPv6 address needs its brackets: the
            last ``:`` of ``::1:8080`` could be either), or a ``(host, port)`` tuple (or list)
            whose host has no brackets.

    Raises:
        ValueError: No port, a port out of 1..65535 or not a number, an empty host, a bare
            IPv6 address, spaces or control characters; the message names the value.
        TypeError: Not a string nor a pair of (str, int).
    """
    if isinstance(value, str):
        text = value
        if text.startswith("["):
            host, bracket, rest = text[1:].partition("]")
            if not bracket or not rest.startswith(":"):
                raise ValueError(f"server address {value!r}: {_EXAMPLE}, e.g. '[::1]:8080'")
            if ":" not in host:
                raise ValueError(f"server address {value!r}: brackets are for IPv6 addresses")
            port_text = rest[1:]
        else:
            host, colon, port_text = text.rpartition(":")
            if not colon:
                raise ValueError(f"server address {value!r}: no port ({_EXAMPLE})")
            if ":" in host:
                raise ValueError(
                    f"server address {value!r}: an IPv6 address needs brackets, "
                    f"e.g. '[{host}]:{port_text}'"
                )
        return _check_host(host, value), _check_port(port_text, value)
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise ValueError(f"server address {value!r}: {_EXAMPLE}")
        return _check_host(value[0], value), _check_port(value[1], value)
    raise TypeError(f"server address {value!r}: {_EXAMPLE}")


def parse_addresses(
    first: Address | None, more: Iterable[str | tuple[str, int]] | None
) -> list[Address]:
    """Return ``first`` (if any) then every address of ``more``, parsed, in order.

    Raises:
        ValueError: An address is invalid (see :func:`parse_address`) or listed twice.
        TypeError: ``more`` is one string rather than a sequence of addresses, or an address
            has the wrong type.
    """
    if isinstance(more, str | bytes):
        raise TypeError(f"servers must be a sequence of addresses, not one: servers=[{more!r}]")
    addresses = [] if first is None else [first]
    for value in more or ():
        address = parse_address(value)
        if address in addresses:
            raise ValueError(f"server address {format_address(address)} is listed twice")
        addresses.append(address)
    return addresses


def format_address(address: Address) -> str:
    """Return ``address`` as ``host:port`` (``[host]:port`` for an IPv6 address)."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
