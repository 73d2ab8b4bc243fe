"""Codex 0.171's capability discovery: the plugins and skills an environment has.

* :mod:`.roots`: ``capabilityRoots/discoverV1``, the capability files under roots
  the client names;
* :mod:`.discovery`: ``capabilities/discoverV2``, the plugins and skills installed in
  the places Codex keeps them, with their metadata parsed;
* :mod:`.skill_metadata`: ``SKILL.md`` front matter, ``agents/openai.yaml`` and
  plugin manifests (pure functions);
* :mod:`.versions`: which installed plugin version is active.

All of it reads the disk: call it from a worker thread.
"""
