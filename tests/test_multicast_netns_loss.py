"""Reliable multicast across real, independent loss: hosts in network namespaces on a bridge.

The sender and each of 3 receivers live in a network namespace of their own, on a bridge
(veth pairs, 192.0.2.0/24 inside the namespaces only); nftables in each receiver's namespace
drops a random share of UDP input, so each receiver loses different datagrams. The network
and the roles are ``benchmarks/mcast_reliable.py``, which also runs the full 10,000-message
figures (docs/performance.md). Needs root, iproute2 and nftables; skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from benchmarks import mcast_reliable

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _needs_namespaces() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("network namespaces are Linux only")
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("loss", "senders"), [(10, 1), (30, 1), (10, 2)])
async def test_every_receiver_gets_everything_in_order(loss: int, senders: int) -> None:
    """3 receivers, each losing ``loss`` % of UDP input: every one gets every message of
    every sender, in order, none twice, no gap; NACKs stay well under one per loss."""
    result = await mcast_reliable.run(1000, 1000.0, loss, receivers=3, senders=senders, limit=60)
    assert result["all_ok"], result["receivers_detail"]
    assert result["lost_datagrams"] > 0
    assert result["nacks_per_lost"] < 1.0
    for detail in result["receivers_detail"]:
        assert detail["stats"]["gaps"] == 0
