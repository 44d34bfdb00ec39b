"""``python -m export``: see export/cli.py and docs/own-model.md."""

import sys

from export.cli import main

sys.exit(main())
