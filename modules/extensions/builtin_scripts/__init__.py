"""The built-in scripts (A1111's `scripts/` folder): X/Y/Z plot, prompt matrix, prompts from file
or textbox, loopback, outpainting mk2, poor man's outpainting, SD upscale. Each module defines
`Script` subclasses on the same API as extensions (`modules.extensions.script_base`)."""
