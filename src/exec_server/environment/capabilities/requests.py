"""The two discovery methods on the shared filesystem handler: params are checked on
the event loop (0.171's -32602/-32600 texts), the disk is read in a worker thread."""

from __future__ import annotations

from ...protocol.messages import (
    CapabilityRootsDiscoverParams,
    CapabilityRootsDiscoverResult,
    DiscoverCapabilitiesParams,
    DiscoverCapabilitiesResult,
)
from ...protocol.path_uri import file_uri_to_path
from ..fs_handler import FileSystemHandler
from ..sandbox import parse_sandbox
from .discovery import discover_capabilities
from .roots import check_root_count, discover_root


async def discover_capabilities_v2(
    fs: FileSystemHandler, p: DiscoverCapabilitiesParams
) -> DiscoverCapabilitiesResult:
    """``capabilities/discoverV2``: ``cwd`` must be a ``file://`` URI (it is not
    scanned: 0.171 discovers only the installed, global locations)."""
    file_uri_to_path(p.cwd)
    spec = parse_sandbox(p.sandbox)
    return await fs.run_blocking(lambda: discover_capabilities(fs.resolve_sandbox(spec)))


async def discover_capability_roots(
    fs: FileSystemHandler, p: CapabilityRootsDiscoverParams
) -> CapabilityRootsDiscoverResult:
    """``capabilityRoots/discoverV1``: each root in request order, read through its
    own ``sandbox``."""
    requests = [
        (root.id, file_uri_to_path(root.path), parse_sandbox(root.sandbox)) for root in p.roots
    ]
    check_root_count(len(requests))

    def work() -> CapabilityRootsDiscoverResult:
        return CapabilityRootsDiscoverResult(
            roots=[
                discover_root(root_id, path, fs.resolve_sandbox(spec))
                for root_id, path, spec in requests
            ]
        )

    return await fs.run_blocking(work)
