"""``python bench/autolora_glue.py ...``: the command line of the bench/autolora_glue package (see its docstring).

Run as a script, bench/ is first on sys.path, and there the package folder autolora_glue/ wins over this file.
"""
import sys

from autolora_glue.main import main

if __name__ == "__main__":
    sys.exit(main())
