"""`python -m megatron_tsp.planner`: a flag error ends in one line naming the flag, exit code 2
(as argparse's own), not a traceback."""

import sys

from megatron_tsp.planner.plan import main

try:
    main()
except ValueError as error:
    print(f"python -m megatron_tsp.planner: error: {error}", file=sys.stderr)
    sys.exit(2)
