"""Pure-Python core: settings, options, paths, hashes, errors. Imports no torch, gradio or fastapi."""
