"""The OpenAI Images API: ``POST /v1/images/generations`` and ``GET /v1/models``."""
