"""The beacon codec and the discovered-servers table, sans I/O: bytes in, a fake clock."""

from __future__ import annotations

import json

import pytest

from chatcast._core.beacon import (
    MAX_BEACON_BYTES,
    Beacon,
    BeaconDecoder,
    BeaconEncoder,
    BeaconSkip,
    ServerTable,
    decode_body,
    encode_body,
)

SID = "0123456789abcdef"
NOW = 1_700_000_000.0


def beacon(**fields: object) -> Beacon:
    values: dict[str, object] = {"server_id": SID, "name": "lab", "tcp": 8080}
    values.update(fields)
    return Beacon(**values)  # type: ignore[arg-type]


def test_body_round_trip() -> None:
    """Every field survives encode_body/decode_body; the body is chatcast's own kind."""
    original = beacon(host="192.0.2.1", tls=8443, web=8000, token=True, clients=7, interval=2.5)
    body = encode_body(original)
    assert json.loads(body)["type"] == "beacon"
    assert decode_body(body) == original
    assert len(body) < 300


@pytest.mark.parametrize(
    "fields",
    [
        {"server_id": "XYZ"},
        {"name": ""},
        {"name": "x" * 65},
        {"tcp": 0},
        {"tcp": 70000},
        {"tcp": None},
        {"tcp": True},
        {"clients": -1},
        {"interval": 0},
        {"interval": float("nan")},
        {"token": "yes"},
    ],
)
def test_invalid_beacons_are_refused(fields: dict[str, object]) -> None:
    """A beacon out of range is a ValueError when made, and None when decoded."""
    with pytest.raises(ValueError, match=r"."):
        beacon(**fields)
    body = json.loads(encode_body(beacon()))
    key = {"server_id": "id"}.get(next(iter(fields)), next(iter(fields)))
    body[key] = next(iter(fields.values()))
    assert decode_body(json.dumps(body).encode()) is None


@pytest.mark.parametrize(
    "data",
    [b"", b"halo", b"{", b"[]", b'{"type":"message","text":"x"}', b"\xff\xfe", b"[" * 5000],
)
def test_junk_is_not_a_beacon(data: bytes) -> None:
    """Junk, chat messages and deep nesting decode to None, never raise."""
    assert decode_body(data) is None


def test_unsigned_decoder() -> None:
    """Without a key: JSON beacons and (unverified) signed ones pass; junk is counted."""
    decoder = BeaconDecoder()
    plain = BeaconEncoder(SID, epoch=1).encode(beacon(), NOW)
    signed = BeaconEncoder(SID, epoch=1, key=b"k").encode(beacon(), NOW)
    assert decoder.decode(plain, NOW) == beacon()
    assert decoder.decode(signed, NOW) == beacon()
    assert decoder.decode(b"x" * (MAX_BEACON_BYTES + 1), NOW) is BeaconSkip.OVERSIZED
    assert decoder.decode(b"chatcast-hmac1 junk", NOW) is BeaconSkip.INVALID
    assert decoder.received == 4
    assert decoder.skipped == {BeaconSkip.OVERSIZED: 1, BeaconSkip.INVALID: 1}


def test_keyed_decoder_drops_forged_unsigned_stale_and_replayed() -> None:
    """With a key only fresh beacons signed with it, heard once, pass."""
    decoder = BeaconDecoder(key=b"right")
    good = BeaconEncoder(SID, epoch=1, key=b"right")
    wrong = BeaconEncoder(SID, epoch=1, key=b"wrong")
    first = good.encode(beacon(), NOW)
    assert decoder.decode(first, NOW) == beacon()
    assert decoder.decode(first, NOW) is BeaconSkip.REPLAYED
    assert decoder.decode(wrong.encode(beacon(), NOW), NOW) is BeaconSkip.FORGED
    assert decoder.decode(encode_body(beacon()), NOW) is BeaconSkip.UNSIGNED
    assert decoder.decode(good.encode(beacon(), NOW - 3600), NOW) is BeaconSkip.STALE
    assert decoder.decode(first[:-1] + b"0", NOW) is BeaconSkip.FORGED
    assert decoder.decode(good.encode(beacon(clients=2), NOW), NOW) == beacon(clients=2)


def test_signed_beacon_must_be_its_senders() -> None:
    """A key holder cannot announce under another server's id: the id is the sender id."""
    encoder = BeaconEncoder("fedcba9876543210", epoch=1, key=b"k")
    with pytest.raises(ValueError, match="server_id"):
        encoder.encode(beacon(), NOW)


def test_table_new_changed_unchanged_bye() -> None:
    """update() reports what a person would see change, and a goodbye removes the server."""
    table = ServerTable()
    new = table.update(beacon(), "192.0.2.1", 10.0)
    assert new is not None
    assert (new.host, new.port, new.gone) == ("192.0.2.1", 8080, False)
    assert table.update(beacon(), "192.0.2.1", 11.0) is None  # nothing to see
    changed = table.update(beacon(clients=3), "192.0.2.1", 12.0)
    assert changed is not None
    assert changed.clients == 3
    assert changed.first_seen == 10.0
    gone = table.update(beacon(bye=True), "192.0.2.1", 13.0)
    assert gone is not None
    assert gone.gone
    assert table.servers() == []
    assert table.update(beacon(bye=True), "192.0.2.1", 14.0) is None  # unknown: nothing


def test_table_expires_silent_servers() -> None:
    """A server silent for three of its intervals is forgotten; one that speaks stays."""
    table = ServerTable()
    table.update(beacon(interval=2.0), "192.0.2.1", 0.0)
    table.update(beacon(server_id="1" * 16, interval=2.0), "192.0.2.2", 0.0)
    assert table.expire(5.9) == []
    table.update(beacon(server_id="1" * 16, interval=2.0), "192.0.2.2", 5.0)
    gone = table.expire(6.0)
    assert [(server.server_id, server.gone) for server in gone] == [(SID, True)]
    assert [server.server_id for server in table.servers()] == ["1" * 16]
    assert table.next_expiry() == 11.0


def test_announced_interval_is_clamped() -> None:
    """A huge announced interval cannot pin an entry for ever (60 s at most)."""
    table = ServerTable()
    server = table.update(beacon(interval=1e9), "192.0.2.1", 0.0)
    assert server is not None
    assert server.expires == 180.0


def test_flood_of_fake_ids_is_bounded() -> None:
    """20,000 fake ids leave at most max_servers entries, and a real server that keeps
    announcing is still there."""
    table = ServerTable(max_servers=64)
    decoder = BeaconDecoder(max_servers=64)
    real = BeaconEncoder(SID, epoch=1)
    for i in range(20_000):
        fake = Beacon(server_id=f"{i + 1:016x}", name="fake", tcp=1)
        result = decoder.decode(encode_body(fake), NOW)
        assert isinstance(result, Beacon)
        table.update(result, "192.0.2.66", float(i))
        if i % 32 == 0:
            ok = decoder.decode(real.encode(beacon(), NOW), NOW)
            assert isinstance(ok, Beacon)
            table.update(ok, "192.0.2.1", float(i))
    assert len(table) == 64
    assert table.evicted == 20_001 - 64
    assert SID in {server.server_id for server in table.servers()}


def test_bad_table_size() -> None:
    """max_servers below 1 is a ValueError naming it."""
    with pytest.raises(ValueError, match="max_servers"):
        ServerTable(max_servers=0)
