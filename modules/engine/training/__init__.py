"""Training on the worker: datasets and bucketing, textual inversion, hypernetworks, LoRA."""
