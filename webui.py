"""Entry point: parse flags -> Settings -> modules.app.main(). `webui.sh` runs this."""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    from modules.app import main

    sys.exit(main(sys.argv[1:], os.environ))
