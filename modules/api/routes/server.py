"""/sdapi/v1 routes: server."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
