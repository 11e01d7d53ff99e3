"""Gzip for responses of 1000 bytes and more, as A1111 does (`GZipMiddleware`, minimum 1000).

The UI's page is about 3 MB of HTML (Gradio writes the whole component tree into it) and most
of the UI's and API's other answers are JSON: over `--listen` or `--share` they are several times
smaller gzipped. Images, zips, event streams (Gradio's queue), partial (206) and already-encoded
responses are sent as they are (Starlette's defaults); a client that does not ask for gzip gets
the plain body.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.gzip import GZipMiddleware

MINIMUM_SIZE = 1000  # bytes: A1111's threshold
COMPRESS_LEVEL = 6  # zlib's default: within a few % of level 9's size at a fraction of its time


def install_compression(app: FastAPI) -> None:
    """Add the gzip middleware; starlette adds middleware only before the first request."""
    app.add_middleware(GZipMiddleware, minimum_size=MINIMUM_SIZE, compresslevel=COMPRESS_LEVEL)
