"""``python -m headserve.app ARGS``: the same as the `headserve` console script."""

import sys

from headserve.app.cli import main

sys.exit(main())
