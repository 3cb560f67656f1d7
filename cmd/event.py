#!/usr/bin/env python3
"""Run the `event` command from a checkout without installing it: `python cmd/event.py worker app:pool`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from event.cli import main

raise SystemExit(main())
