"""Kept so existing scripts work: runs `python -m tools.segmentation` (see the README)."""
import sys

from tools.segmentation import main

if __name__ == "__main__":
    sys.exit(main())
