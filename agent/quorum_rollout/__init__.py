"""quorum-rollout agent: Raft-coordinated rolling releases for one server group."""

__version__ = "0.1.0"
