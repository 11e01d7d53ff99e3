"""/sdapi/v1 routes: info."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
