"""Kept so existing scripts work: runs `python -m tools.ablate` (see the README)."""
import sys

from tools.ablate import main

if __name__ == "__main__":
    sys.exit(main())
