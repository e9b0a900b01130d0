"""The main CI venv cannot skip: under EDGE_AGENT_TESTS_REQUIRE_ALL=1 (set by .ci/run) a test
that skips, e.g. through support.strict.requires() for a missing package, fails instead."""

import os
import shutil
import subprocess
import sys

from support.paths import ROOT, TESTS

TEST = '''
from support.strict import requires

def test_needs_a_missing_package():
    requires("edge_agent_no_such_package")
'''


def run(tmp_path, strict):
    shutil.copy(os.path.join(ROOT, "tests", "conftest.py"), str(tmp_path / "conftest.py"))
    (tmp_path / "test_x.py").write_text(TEST)
    env = dict(os.environ)
    # the copied conftest.py imports support.*: tests/ on the path
    env["PYTHONPATH"] = os.pathsep.join([TESTS] + [p for p in [env.get("PYTHONPATH")] if p])
    env.pop("EDGE_AGENT_TESTS_REQUIRE_ALL", None)
    if strict:
        env["EDGE_AGENT_TESTS_REQUIRE_ALL"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-rs", "-p",
                             "no:cacheprovider", str(tmp_path / "test_x.py")],
                            cwd=str(tmp_path), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = proc.communicate(timeout=120)[0].decode(errors="replace")
    return proc.returncode, out


def test_a_missing_package_skips_on_a_stack(tmp_path):
    code, out = run(tmp_path, strict=False)
    assert code == 0 and "1 skipped" in out and "edge_agent_no_such_package" in out, out


def test_a_missing_package_fails_on_the_main_venv(tmp_path):
    code, out = run(tmp_path, strict=True)
    assert code == 1 and "1 failed" in out and "edge_agent_no_such_package" in out, out
