"""/sdapi/v1 routes: options."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
