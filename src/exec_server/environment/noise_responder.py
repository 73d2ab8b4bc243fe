"""The environment's side of the encrypted relay: its key, its streams, its registry checks.

A remote environment in Noise mode (the default of ``serve --remote`` and ``up``) holds
one :class:`~exec_server.relay.noise.NoiseIdentity` for the life of the process. It is
generated here, never written anywhere and never logged; only its public half leaves
the process, in the ``/register`` body. The registry answers an
``executor_registration_id``; both go into every handshake's prologue, so a harness
handshake made for another environment, registration or stream fails.

:class:`NoiseResponder` owns the :class:`~exec_server.relay.noise.noise_mux.NoiseStreamMux`
that the environment's :class:`~exec_server.transport.relay_connection.RelayConnection`
drives, and answers its :class:`~exec_server.relay.noise.noise_mux.ValidationRequested`
events: each harness key proven by a message 1 is checked with the registry's
``/validate`` (bearer: the registration token; header ``x-codex-noise-stream-id``)
before message 2 is sent. An answer other than ``{"valid": true}``, an error or no
answer within the validation timeout refuses the harness (fail closed); at most 32
validations wait per socket (the multiplexer's bound), each a task of the environment's
task group. While the registry is asked, message 2 is computed (it depends only on
message 1) and held; it is sent only after a yes. The registry client's HTTP session is
the environment's, so validations reuse one kept-alive connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from ..relay.noise import NoiseIdentity
from ..relay.noise.noise_mux import (
    HandshakeFailed,
    NoiseMuxConfig,
    NoiseStreamMux,
    ValidationRequested,
)
from ..relay.stream_mux import MuxConfig, MuxRole
from ..transport.registry_client import Registration, RegistryClient, RegistryError

__all__ = ["NoiseResponder"]

log = logging.getLogger(__name__)

REQUEST_WRITE_STEPS = 8
"""Event-loop steps a ``/validate`` request is given to reach its socket before message 2
is computed (fewer if it is answered sooner), so that the computation overlaps the
registry's round trip instead of delaying the request. On the kept-alive connection the
request is written at the second step; after an idle spell (aiohttp closes idle
connections after 15 s) a new connection takes six to eight."""


class NoiseResponder:
    """The Noise half of one remote environment (see the module docstring)."""

    def __init__(
        self,
        environment_id: str,
        mux_config: MuxConfig,
        noise: NoiseMuxConfig | None = None,
        *,
        identity: NoiseIdentity | None = None,
    ) -> None:
        self.environment_id = environment_id
        self.identity = identity or NoiseIdentity.generate()
        self.mux = NoiseStreamMux(
            MuxRole.ENVIRONMENT,
            mux_config,
            noise=noise,
            identity=self.identity,
            environment_id=environment_id,
        )
        self.registration_id: str | None = None
        self.validations = 0
        self.refusals = 0
        self._registry: RegistryClient | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._poke: Callable[[], None] | None = None
        self._now: Callable[[], float] | None = None

    def __repr__(self) -> str:
        return (
            f"NoiseResponder({self.environment_id!r}, key={self.identity.public_key.fingerprint}, "
            f"registration={self.registration_id!r})"
        )

    def registered(self, registration: Registration) -> None:
        """The registry accepted the key: new handshakes use this registration."""
        registration_id = registration.executor_registration_id
        if not registration_id:
            raise ValueError("a Noise registration needs an executor_registration_id")
        if registration_id != self.registration_id:
            log.info(
                "Noise key %s registered as %s",
                self.identity.public_key.fingerprint,
                registration_id,
            )
        self.registration_id = registration_id
        self.mux.set_registration(self.environment_id, registration_id)

    def bind(
        self,
        registry: RegistryClient,
        tasks: asyncio.TaskGroup,
        *,
        poke: Callable[[], None],
        now: Callable[[], float],
    ) -> None:
        """Where validations go (``registry``), who owns their tasks (``tasks``), how to
        tell the relay connection the multiplexer changed (``poke``), and its clock."""
        self._registry = registry
        self._tasks = tasks
        self._poke = poke
        self._now = now

    def on_event(self, event: object) -> None:
        """The multiplexer's own events, from the relay connection."""
        if isinstance(event, ValidationRequested):
            if self._tasks is None:
                self._answer(event, False)
                return
            self._tasks.create_task(
                self._validate(event), name=f"noise validation {event.stream_id}"
            )
        elif isinstance(event, HandshakeFailed):
            log.info("refused a Noise handshake on stream %s: %s", event.stream_id, event.reason)

    async def _validate(self, event: ValidationRequested) -> None:
        registry = self._registry
        registration_id = event.executor_registration_id or self.registration_id
        valid = False
        if registry is not None and registration_id is not None:
            try:
                async with asyncio.timeout(self.mux.noise.validation_timeout_s):
                    valid = await self._ask_registry(registry, registration_id, event)
            except (RegistryError, TimeoutError) as exc:
                log.warning("cannot validate a harness key with the registry: %s", exc)
            except Exception:  # fail closed, and keep the environment's task group alive
                log.exception("validating a harness key failed")
        self.validations += 1
        if not valid:
            self.refusals += 1
        self._answer(event, valid)

    async def _ask_registry(
        self, registry: RegistryClient, registration_id: str, event: ValidationRequested
    ) -> bool:
        """``/validate``, with message 2 computed while the request is in flight (it is
        sent only after a yes: :meth:`NoiseStreamMux.prepare_answer`)."""
        request = asyncio.ensure_future(
            registry.validate(
                self.environment_id,
                executor_registration_id=registration_id,
                harness_key=event.harness_public_key,
                authorization=event.authorization,
                stream_id=event.stream_id,
            )
        )
        try:
            # Let the request reach the socket first (aiohttp writes it from the request
            # task's second step on Python 3.11, eagerly on 3.12+).
            for _ in range(REQUEST_WRITE_STEPS):
                if request.done():
                    break
                await asyncio.sleep(0)
            self.mux.prepare_answer(event.stream_id, event.validation_id)
            return await request
        finally:
            if not request.done():
                request.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await request

    def _answer(self, event: ValidationRequested, valid: bool) -> None:
        now = self._now() if self._now is not None else 0.0
        self.mux.validation_result(event.stream_id, event.validation_id, valid, now)
        if self._poke is not None:
            self._poke()
