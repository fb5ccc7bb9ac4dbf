"""Black Forest Labs' API: POST /v1/<model> -> {id, polling_url}; GET /v1/get_result."""
