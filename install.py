"""Run by ComfyUI-Manager after it clones this node pack: installs the ``fouriscale`` package from this folder into
the Python that runs ComfyUI (pip keeps the torch already there: the package asks for torch>=2.1)."""

import os
import subprocess
import sys

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", here]))
