"""The OpenAI Images API: ``POST /v1/images/generations``, ``POST /v1/images/edits`` and
``GET /v1/models``."""
