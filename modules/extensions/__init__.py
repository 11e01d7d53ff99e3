"""Extension discovery and loading (later issues)."""
