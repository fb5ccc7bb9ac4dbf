"""fal.ai's FLUX endpoints: synchronous ``POST /<endpoint>`` and the queue under ``/queue``."""
