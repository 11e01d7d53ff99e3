"""FastAPI adapters for /sdapi/v1 (later issues)."""
