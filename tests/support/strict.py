"""requires(): skip on a JetPack stack, fail on the main CI venv
(EDGE_AGENT_TESTS_REQUIRE_ALL=1, the hook in tests/conftest.py)."""

import os
import sys
from typing import Any

import pytest


# .ci/run sets this for the main suite, where every optional package is installed: there a test
# that would skip fails instead, so nothing can silently stop running. The JetPack stacks
# (.ci/stacks) leave it unset: tests needing what a stack lacks (ONNX Runtime, onnx,
# hypothesis, cryptography, Chromium, GStreamer...) skip there, with the reason.
REQUIRE_ALL = os.environ.get("EDGE_AGENT_TESTS_REQUIRE_ALL") == "1"


def requires(module: str) -> Any:
    """`module`, imported; where it is missing or broken the test skips (a JetPack stack), or
    fails under EDGE_AGENT_TESTS_REQUIRE_ALL=1 (the main CI venv)."""
    import importlib
    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken install
        pytest.skip("{} is not importable on Python {}.{} ({}: {})".format(
            module, sys.version_info[0], sys.version_info[1], type(exc).__name__, exc))
