"""``python -m solens``: the command line (``torchrun ... -m solens effects ...`` too)."""

from solens.cli import main

if __name__ == "__main__":
    main()
