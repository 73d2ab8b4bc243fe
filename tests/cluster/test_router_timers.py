"""The cluster router owns its delayed callbacks: closing it cancels them."""

from __future__ import annotations

import asyncio

from exec_server.rendezvous.cluster.state import LocalClusterState
from exec_server.rendezvous.cluster_router import ClusterRouter


async def test_a_delayed_callback_runs_while_open_and_never_after_close() -> None:
    router = ClusterRouter(None, LocalClusterState())
    fired: list[str] = []
    try:
        router._later(0.01, lambda: fired.append("open"))
        await asyncio.sleep(0.2)
        assert fired == ["open"]
        assert not router._linger_timers, "a fired timer leaves the set"
        router._later(0.05, lambda: fired.append("after close"))
        assert len(router._linger_timers) == 1
    finally:
        await router.aclose()
    assert not router._linger_timers
    await asyncio.sleep(0.2)
    assert fired == ["open"]
