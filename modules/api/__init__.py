"""FastAPI adapters for A1111's `/sdapi/v1`: one router per resource, hand-written schemas with
A1111's names and defaults, converters to core requests, auth."""
