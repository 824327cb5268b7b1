"""`python -m automation` is `autodeploy`."""

import sys

from automation.cli import main

sys.exit(main())
