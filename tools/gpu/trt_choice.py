"""Which TensorRT a GPU check runs against: the installed one, or a stand-in named by the user.

The GPU machines have no TensorRT, so the checks are run there with `--trt-double DIR`, DIR
holding a `trt_double.py` (the repository's is tests/support/doubles; tools do not import tests on
their own). Without the option the installed `tensorrt` is used.
"""

import os
import sys
from typing import Any


def add_argument(parser: Any) -> None:
    parser.add_argument("--trt-double", metavar="DIR", default=None,
                        help="a folder holding trt_double.py to stand in for TensorRT 10.3 "
                             "(e.g. tests/support/doubles); default: the installed tensorrt")


def install(folder: Any) -> str:
    """Make `import tensorrt` give the double from `folder` (or check the real one is there);
    returns what the check runs against, for its report."""
    if folder is None:
        import tensorrt
        return "tensorrt {}".format(getattr(tensorrt, "__version__", "unknown"))
    sys.path.insert(0, os.path.abspath(folder))
    import trt_double  # the file in `folder`, as the option says
    trt_double.install("10.3")  # GPU facts read from the real device through pycuda
    return "trt_double 10.3 from {}".format(folder)
