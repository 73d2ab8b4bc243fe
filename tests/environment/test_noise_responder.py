"""The environment's Noise responder (environment/noise_responder.py) with a scripted
registry: message 2 is computed while ``/validate`` is in flight, and sent only after a
yes; a no, an error or a registry that never answers sends nothing but a reset."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from exec_server.environment.noise_responder import NoiseResponder
from exec_server.relay.frame_codec import decode_frame
from exec_server.relay.noise import NoiseIdentity
from exec_server.relay.noise.noise_mux import NoiseBundle, NoiseMuxConfig, NoiseStreamMux
from exec_server.relay.stream_mux import MuxConfig, MuxRole
from exec_server.transport.registry_client import Registration, RegistryError

ENV, REG = "env-1", "reg-1"


class ScriptedRegistry:
    """Answers ``validate`` with ``answer`` once released; records what the mux held
    while the request was in flight."""

    def __init__(self, responder: NoiseResponder, answer: bool | Exception | None) -> None:
        self.responder = responder
        self.answer = answer
        self.release = asyncio.Event()
        self.prepared_while_asking: list[bool] = []
        self.calls: list[dict[str, Any]] = []

    async def validate(self, environment_id: str, **kwargs: Any) -> bool:
        self.calls.append({"environment_id": environment_id, **kwargs})
        await self.release.wait()
        pending = self.responder.mux._responder
        assert pending is not None
        held = pending.pending.get(kwargs["stream_id"])
        self.prepared_while_asking.append(held is not None and held.answer is not None)
        if isinstance(self.answer, Exception):
            raise self.answer
        if self.answer is None:
            await asyncio.Event().wait()  # never answers
        return bool(self.answer)


async def handshake(
    answer: bool | Exception | None, *, timeout_s: float = 10.0
) -> tuple[NoiseResponder, ScriptedRegistry, list[str]]:
    """One harness handshake against a responder; the frame kinds it sent back."""
    responder = NoiseResponder(ENV, MuxConfig(), NoiseMuxConfig(validation_timeout_s=timeout_s))
    responder.registered(Registration(ENV, "ws://unused", REG))
    registry = ScriptedRegistry(responder, answer)
    harness = NoiseStreamMux(MuxRole.HARNESS)
    bundle = NoiseBundle(ENV, REG, responder.identity.public_key, "authorization")
    harness.open_noise_stream("s-1", bundle, NoiseIdentity.generate(), 0.0)
    pokes: list[None] = []
    async with asyncio.TaskGroup() as tasks:
        responder.bind(
            registry,  # type: ignore[arg-type]
            tasks,
            poke=lambda: pokes.append(None),
            now=lambda: 0.0,
        )
        for data in harness.data_to_send(0.0):
            responder.mux.receive_bytes(data, 0.0)
        for event in responder.mux.events():
            responder.on_event(event)
        await asyncio.sleep(0.05)  # the request is in flight; message 2 is prepared
        assert responder.mux.data_to_send(0.0) == []  # nothing before the answer
        registry.release.set()
    sent = [decode_frame(data).kind for data in responder.mux.data_to_send(0.0)]
    assert pokes == [None]
    return responder, registry, sent


async def test_message_2_is_prepared_during_validate_and_sent_after_a_yes() -> None:
    responder, registry, sent = await handshake(True)
    assert registry.prepared_while_asking == [True]
    (call,) = registry.calls
    assert call["stream_id"] == "s-1" and call["authorization"] == "authorization"
    assert sent == ["handshake"]
    assert list(responder.mux.streams) == ["s-1"]
    assert (responder.validations, responder.refusals) == (1, 0)


@pytest.mark.parametrize(
    "answer",
    [False, RegistryError(0, "unreachable", "connection refused", "http://registry")],
    ids=["refused", "registry-error"],
)
async def test_a_prepared_message_2_is_dropped_unsent_on_a_no(answer: bool | Exception) -> None:
    responder, registry, sent = await handshake(answer)
    assert registry.prepared_while_asking == [True]
    assert sent == ["reset"]
    assert responder.mux.streams == {} and responder.mux.pending_validations == 0
    assert (responder.validations, responder.refusals) == (1, 1)


async def test_a_registry_that_never_answers_is_a_no() -> None:
    responder, _, sent = await handshake(None, timeout_s=0.2)
    assert sent == ["reset"] and responder.mux.streams == {}
    assert responder.refusals == 1
