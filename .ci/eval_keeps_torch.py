"""CI check: the README's install line of the ``eval`` extra keeps the installed torch.

``pip install -e ".[eval]"`` alone lets pip pick the newest torchvision, which pins another torch, and so replaces
the installed torch (on the CPU build: by a CUDA build and ~15 CUDA packages). The README's line names the installed
torch in the same command; pip's resolver (asked with --dry-run: installing torchvision from the registry would
put a CUDA build beside a CPU torch, which does not import) must then leave torch as it is.
"""

import json
import subprocess
import sys
import tempfile

import torch

pin = f"torch=={torch.__version__}"
with tempfile.TemporaryDirectory() as folder:
    report = f"{folder}/report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", report, "-e", ".[eval]", pin]
    subprocess.run(command, check=True)
    with open(report, encoding="utf-8") as fh:
        planned = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in json.load(fh)["install"]}
swapped = {name: version for name, version in planned.items() if name == "torch" or name.startswith("nvidia-")}
if swapped:
    sys.exit(f"the eval extra would replace torch {torch.__version__}: {swapped}")
print(f"eval extra keeps torch {torch.__version__}: pip would add {', '.join(sorted(planned)) or 'nothing'}")
