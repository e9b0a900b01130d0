"""Paths of the repository: ROOT, TESTS, the bundled model and sample photos."""

import os


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.join(ROOT, "tests")
MODEL_DIR = os.path.join(ROOT, "models", "efficientnet_lite0")
SAMPLES = os.path.join(ROOT, "models", "samples")
