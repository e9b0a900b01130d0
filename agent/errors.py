"""Errors meant for users: each names the thing, the bad value and the fix."""


class AgentError(Exception):
    """An error whose message is complete enough to show a user without a traceback."""


class ConfigError(AgentError):
    """Invalid configuration; the message starts with the key path."""


class ModelError(AgentError):
    """A model package, file or manifest is unusable."""


class BackendError(AgentError):
    """An inference backend could not be loaded or failed to run."""


class SourceError(AgentError):
    """A frame source could not be opened or read."""


class Cancelled(AgentError):
    """Long work (a TensorRT build) stopped on request: model/cancel, or the agent stopping.
    Not a reason to try the next backend."""
