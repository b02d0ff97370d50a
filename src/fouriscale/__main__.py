"""``python -m fouriscale`` (and ``accelerate launch -m fouriscale``) runs the command line."""

import sys

from .frontend.cli import main

sys.exit(main())
