"""`python -m local.run`: see `local.run`."""

from __future__ import annotations

import sys

from local.run import main

sys.exit(main())
