"""`python -m relay`: see `relay.wiring`."""

import sys

from relay.wiring import main

sys.exit(main())
