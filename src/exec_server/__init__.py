"""exec-server: a Codex-compatible remote execution server, harness SDK and relay."""

__version__ = "0.1.0"
