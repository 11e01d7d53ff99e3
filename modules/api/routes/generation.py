"""/sdapi/v1 routes: generation."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
