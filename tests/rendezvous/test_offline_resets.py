"""Our router with our endpoints: a peer given up by the rendezvous ends the stream.

The resets the rendezvous sends when a grace period ends (``environment_offline`` to the
harness, ``harness_offline`` to the environment) must end the stream at once on our
reliable endpoints, within the grace plus a round trip, instead of being dropped for a
missing capability flag and leaving each side to its 60 s idle timeout. Every wait below
is far shorter than that idle timeout, so a dropped reset fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
import pytest
from rendezvous_support import TOKEN, WAIT_S, MakeRendezvous, wait_for

from exec_server.client import ClientConfig, ExecServerClient, FailedEvent, TransportClosed
from exec_server.environment.remote import RemoteEnvironment, RemoteEnvironmentConfig
from exec_server.environment.server import ExecServer
from exec_server.relay.control import ENVIRONMENT_OFFLINE
from exec_server.rendezvous import RendezvousServer
from exec_server.rendezvous.router import ResetReason
from exec_server.transport.channel import ChannelClosed
from exec_server.transport.harness_relay import HarnessRelayChannel, connect_harness_relay
from exec_server.transport.relay_connection import RelayStatus, RelayStreamChannel

ENV = "env-offline"
GRACE_S = 0.5
IDLE_TIMEOUT_S = 60.0
"""The reliable stream's idle timeout: what a dropped reset would fall back to."""


@dataclass
class Setup:
    rendezvous: RendezvousServer
    remote: RemoteEnvironment
    task: asyncio.Task[None]
    env_channels: list[RelayStreamChannel]


@pytest.fixture
async def setup(make_rendezvous: MakeRendezvous) -> AsyncIterator[Setup]:
    rendezvous = await make_rendezvous(environment_grace_s=GRACE_S, harness_grace_s=GRACE_S)
    server = ExecServer()
    remote = RemoteEnvironment(
        server,
        RemoteEnvironmentConfig(
            transport="legacy",  # raw cleartext frames below
            base_url=rendezvous.base_url,
            environment_id=ENV,
            token=TOKEN,
            initial_backoff_s=0.05,
            max_backoff_s=0.2,
        ),
    )
    channels: list[RelayStreamChannel] = []
    serve = remote._on_stream

    def record(channel: RelayStreamChannel) -> None:
        channels.append(channel)
        serve(channel)

    remote.connection._on_stream = record
    task = asyncio.ensure_future(remote.run())
    try:
        await asyncio.wait_for(remote.connected.wait(), WAIT_S)
        yield Setup(rendezvous, remote, task, channels)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await server.close()


async def initialized_harness(
    setup: Setup, statuses: list[RelayStatus] | None = None
) -> HarnessRelayChannel:
    """A harness stream whose first round trip is done (so it is reliable both ways)."""
    channel = await connect_harness_relay(
        setup.rendezvous.harness_url(ENV),
        on_status=statuses.append if statuses is not None else None,
    )
    await channel.send(b'{"id":1,"method":"initialize","params":{"clientName":"t"}}')
    reply = msgspec.json.decode(await asyncio.wait_for(channel.receive(), WAIT_S))
    assert "result" in reply, reply
    await wait_for(lambda: len(setup.env_channels) == 1)
    return channel


def test_the_reason_the_transport_watches_for_is_the_routers() -> None:
    assert ResetReason.ENVIRONMENT_OFFLINE.value == ENVIRONMENT_OFFLINE


async def test_environment_offline_past_its_grace_ends_the_harness_stream(setup: Setup) -> None:
    statuses: list[RelayStatus] = []
    harness = await initialized_harness(setup, statuses)
    try:
        setup.task.cancel()  # the environment goes away and does not come back
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await setup.task
        with pytest.raises(ChannelClosed) as ended:
            await asyncio.wait_for(harness.receive(), GRACE_S + 10.0)
        assert ended.value.reason == "environment_offline"
        assert harness.channel.stream.close_reason == "environment_offline"
        # What the harness was told on the way: offline (with the grace), then gone.
        assert [s.state for s in statuses] == ["offline", "gone"]
        offline = statuses[0].grace_s
        assert offline is not None and 0 < offline <= GRACE_S
        stats = setup.rendezvous.router.stats
        assert stats.resets_sent["environment_offline"] == 1
    finally:
        await harness.close()


async def test_harness_offline_past_its_grace_ends_the_environment_stream(setup: Setup) -> None:
    harness = await initialized_harness(setup)
    env_channel = setup.env_channels[0]
    # The harness process dies: its socket goes without a reset (no close() call).
    await harness.sockets.close()
    await wait_for(lambda: env_channel.ended, GRACE_S + 10.0)
    assert env_channel.end_reason == "harness_offline"
    assert env_channel.stream.close_reason == "harness_offline"
    await wait_for(lambda: not setup.remote.connection.mux.streams)
    assert setup.rendezvous.router.stats.resets_sent["harness_offline"] == 1
    assert IDLE_TIMEOUT_S > GRACE_S + 10.0  # the waits above could not be idle timeouts


async def test_the_sdk_reports_the_environment_offline_and_gives_up_without_redialing(
    setup: Setup,
) -> None:
    """Through ``ClientConfig.on_relay_status`` a harness hears offline, then gone; the
    client then fails its process and calls at once instead of redialing an environment
    the rendezvous already waited for (its recovery would last 25 s)."""
    statuses: list[RelayStatus] = []
    config = ClientConfig(on_relay_status=statuses.append, recovery_timeout_s=25.0)
    async with ExecServerClient.connect(
        rendezvous=setup.rendezvous.base_url, environment_id=ENV, token=TOKEN, config=config
    ) as client:
        proc = await client.start_process(["sleep", "60"], cwd="/")
        setup.task.cancel()  # the environment goes away and does not come back
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await setup.task
        event = await asyncio.wait_for(proc.next_event(), GRACE_S + 10.0)
        assert isinstance(event, FailedEvent)
        assert "did not come back" in event.message
        with pytest.raises(TransportClosed, match="did not come back"):
            await client.fs.get_metadata("/")
        assert [s.state for s in statuses] == ["offline", "gone"]
        assert client.recoveries == 0
