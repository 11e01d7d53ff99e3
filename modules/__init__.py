"""sd-webui: a Stable Diffusion web UI and A1111-compatible REST server."""
