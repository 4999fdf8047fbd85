"""`python -m wanlite` is the `wanlite` command."""

import sys

from .cli import main

sys.exit(main())
