"""Kept so existing scripts work: runs `python -m tools.cluster_validation` (see the README)."""
import sys

from tools.cluster_validation import main

if __name__ == "__main__":
    sys.exit(main())
