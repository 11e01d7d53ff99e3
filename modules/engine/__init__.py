"""Requests -> images: worker, denoising loop, conditioning (later issues)."""
