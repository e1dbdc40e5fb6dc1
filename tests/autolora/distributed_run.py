"""`autolora` under torchrun for the distributed tests: ranks other than 0 fail if they try to write anything."""
import os
import sys

from autolora import cli, outputs, retrain

if __name__ == "__main__":
    if int(os.environ.get("RANK", "0")) != 0:
        def refuse(path, *args, **kwargs):
            raise AssertionError(f"rank {os.environ['RANK']} tried to write {path}")

        outputs.atomic_open = refuse
        retrain.atomic_directory = refuse
    sys.exit(cli.main(sys.argv[1:]))
