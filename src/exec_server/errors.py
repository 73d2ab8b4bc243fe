"""The root of every exception the exec-server SDK raises to its users.

It lives at the bottom of the package, importing nothing, so that every layer can
derive its user-facing errors from it: the registry client in ``transport/`` raises
:class:`~exec_server.transport.registry_client.RegistryError`, and the harness SDK
(``exec_server.client``) raises the rest of the tree. ``except ExecServerError``
catches everything the SDK means to raise; anything else is a bug.
"""

from __future__ import annotations


class ExecServerError(Exception):
    """Base class of the SDK's errors.

    ``transient`` says whether trying the same thing again later may succeed (a
    refused connection, a registry answering 503) or not (bad credentials, a
    session that expired); reconnect loops decide with
    :func:`exec_server.transport.reconnect.is_transient`, never by reading messages.
    """

    transient: bool = False
