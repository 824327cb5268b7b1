"""`python -m tests.harness.run ARGS...`: the real autodeploy CLI and runner, over the stand-in stages."""

import sys

from automation.cli import main
from tests.harness.stages import TEST_STAGES

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], stages=TEST_STAGES))
