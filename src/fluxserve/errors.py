"""The one exception tree of fluxserve.

::

    FluxserveError
    ├── InvalidRequest       a client sent a value the server cannot honour (HTTP 422)
    ├── ModelNotAvailable    no loaded model serves the endpoint (HTTP 404)
    ├── JobNotFound          unknown job id
    ├── ModelLoadError       weights missing or unreadable; message says what to do
    ├── ConfigurationError   settings that cannot work together (an alias to no model)
    ├── Unauthenticated      no API key, or one that is unknown or revoked (HTTP 401)
    ├── TooManyRequests      a key's active-job or rate limit is reached (HTTP 429)
    ├── PaymentRequired      the job would overdraw its key's credits (HTTP 402)
    ├── Forbidden            the caller may not do this (HTTP 403)
    ├── ServerBusy           the server's queue is full (HTTP 503)
    ├── DataDirLocked        another server owns the data directory
    ├── GenerationCancelled  the denoising loop was stopped (lease lost)
    ├── LoraError            a LoRA could not be fetched or does not fit (its job ends Error)
    └── StorageError         a result image could not be stored or read

Messages are written for the person who reads them: they name the field or model and say
what is allowed. Internal exception text never reaches a client; the api maps each class to
a status code and body in ``fluxserve.api.errors``. Every class is picklable, because errors
cross the boundary between worker processes and the server.
"""

from __future__ import annotations


class FluxserveError(Exception):
    """Base class of every error fluxserve raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(FluxserveError):
    """A request value that passed the wire schema but not the serving model's limits."""

    def __init__(self, field: str, message: str, value: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value

    def __reduce__(self):  # keep picklable with the extra constructor arguments
        return (type(self), (self.field, self.message, self.value))


class ModelNotAvailable(FluxserveError):
    """No loaded model answers the requested endpoint."""


class JobNotFound(FluxserveError):
    """No job has the given id."""


class ModelLoadError(FluxserveError):
    """Model weights could not be found, downloaded or read."""


class ConfigurationError(FluxserveError):
    """Settings that cannot work together, found at start-up."""


class Unauthenticated(FluxserveError):
    """The request carries no API key, or one that is unknown or revoked."""


class TooManyRequests(FluxserveError):
    """A key's limit is reached; ``retry_after`` seconds is a fair wait."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self):
        return (type(self), (self.message, self.retry_after))


class PaymentRequired(FluxserveError):
    """The job costs more credits than its key has left (``fluxserve keys create --credits``)."""


class Forbidden(FluxserveError):
    """The caller is known but may not do this (an operator's action)."""


class ServerBusy(TooManyRequests):
    """The whole server's queue is full: no one's job is taken for now."""


class LoraError(FluxserveError):
    """A job's LoRA could not be fetched, is not a valid safetensors file, or does not fit
    the model; ``code`` is what the job ends with, the message names the LoRA."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self):
        return (type(self), (self.code, self.message))


class GenerationCancelled(FluxserveError):
    """The denoising loop stopped because the job was cancelled or its lease was lost."""


class StorageError(FluxserveError):
    """A blob could not be written or read."""


class DataDirLocked(FluxserveError):
    """Another fluxserve process already uses this data directory."""
