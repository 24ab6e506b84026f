"""`python -m corsac` and the `corsac` script: hand sys.argv to the C core."""
import sys

from corsac._core import main


def run():
    sys.exit(main(sys.argv))


if __name__ == "__main__":
    run()
