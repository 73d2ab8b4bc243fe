"""The router of one rendezvous node in a cluster: :class:`ClusterRouter`.

The single-node :class:`~exec_server.rendezvous.router.Router` plus what several nodes
need; :mod:`~exec_server.rendezvous.cluster_router.node` describes the whole. One job
per module:

* :mod:`~exec_server.rendezvous.cluster_router.node`: local sockets, stream claims,
  the hooks of the single-node router (:class:`ClusterRouter`);
* :mod:`~exec_server.rendezvous.cluster_router.forwarded`: frames other nodes forward
  (verified before use) and frames lost between nodes;
* :mod:`~exec_server.rendezvous.cluster_router.state_changes`: following the shared
  records (moved environments, taken-over streams, dead nodes, a lost lease);
* :mod:`~exec_server.rendezvous.cluster_router.stream_claim`: the owner record's
  compare-and-set;
* :mod:`~exec_server.rendezvous.cluster_router.peers`: another node seen as a socket;
* :mod:`~exec_server.rendezvous.cluster_router.record_writer`: background record
  writes, in order;
* :mod:`~exec_server.rendezvous.cluster_router.base`: what they share.

The decisions (where a frame goes, whether a forwarded frame is accepted, who owns a
stream) are sans-IO functions of :mod:`~exec_server.rendezvous.cluster.routing`.
"""

from .base import LEASE_LOST_CLOSE_CODE, ClusterStats
from .node import ClusterRouter
from .peers import RemotePeer

__all__ = ["LEASE_LOST_CLOSE_CODE", "ClusterRouter", "ClusterStats", "RemotePeer"]
