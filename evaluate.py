"""Kept so existing scripts work: runs `python -m tools.evaluate` (see the README)."""
import sys

from tools.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
