"""/sdapi/v1 routes: pnginfo."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
