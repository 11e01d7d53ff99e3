"""Gradio adapters (later issues)."""
