"""sd-webui: a Stable Diffusion web UI and A1111-compatible REST server."""

__version__ = "0.1.0"
