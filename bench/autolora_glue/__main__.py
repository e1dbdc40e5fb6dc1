"""``python -m bench.autolora_glue ...`` (from the repository root): the benchmark's command line."""
import sys

from .main import main

sys.exit(main())
