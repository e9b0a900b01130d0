"""Run the agent (`python -m agent ...`) as its own process with the TensorRT and pycuda
doubles from tests/support/doubles in place of the libraries a Jetson has:

    python tests/support/agent_with_doubles.py GENERATION BOARD run -c config.yaml ...

GENERATION is a TensorRT API generation of trt_double ("8.2", "10.3"...), BOARD one of
trt_helpers' boards (NANO, TX2, XAVIER, ORIN). Everything else is the real agent.
"""

import os
import sys

# Run as a script: the repository (agent) and tests/ (support) first on the path.
_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.dirname(_TESTS), _TESTS]


def main() -> int:
    from support import trt_helpers
    generation, board = sys.argv[1], sys.argv[2]
    trt_helpers.pycuda_double.install([dict(getattr(trt_helpers, board))])
    trt_helpers.trt_double.install(generation)
    from agent.__main__ import main as agent_main
    return agent_main(sys.argv[3:])


if __name__ == "__main__":
    sys.exit(main())
