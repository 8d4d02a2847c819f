"""Why a model could not be read. Every message names the repository/path and file.

All are :class:`ModelSourceError` (a ``ValueError``), so callers that only need
"refuse with this message" catch one type; callers that must tell "not here"
from "broken" (the server's validation: a path the server cannot see may still
exist on the workers) catch :class:`ModelNotVisible` first.
"""

from __future__ import annotations


class ModelSourceError(ValueError):
    """The model cannot be read; the message names the source and the problem."""


class ModelNotVisible(ModelSourceError):
    """A local path that does not exist *here*. It may exist on the workers, so
    the server deploys without an estimate; a worker missing it puts the
    instance in ERROR naming worker and path."""


class RepoNotFound(ModelSourceError):
    """Unknown repository (or private and no token that can see it)."""


class FileNotInRepo(ModelSourceError):
    """The repository exists but lacks the file (or no file matches the pattern)."""


class GatedRepo(ModelSourceError):
    """The hub refuses access (401/403): gated or private; a token is needed."""


class HubUnavailable(ModelSourceError):
    """The hub did not answer after bounded retries with backoff."""


class NotAModel(ModelSourceError):
    """The repository or path holds no GGUF or safetensors model gpufleet can read."""
