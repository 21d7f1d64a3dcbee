"""Kept so existing scripts work: runs `python -m tools.cluster` (see the README)."""
import sys

from tools.cluster import main

if __name__ == "__main__":
    sys.exit(main())
