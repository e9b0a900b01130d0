"""The agent (`python -m agent ...`) as a subprocess."""

import os
import signal
import subprocess
import sys
from typing import Dict, List, Optional

from support.paths import ROOT


class AgentProcess(object):
    """`python -m agent ...` as a subprocess, with its stderr kept for assertions."""

    def __init__(self, args: List[str], cwd: str = ROOT, env: Optional[Dict[str, str]] = None
                 ) -> None:
        self.args = [sys.executable, "-m", "agent"] + args
        full_env = dict(os.environ)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(self.args, cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.stdout = b""
        self.stderr = b""

    def wait(self, timeout: float = 60) -> int:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError("agent did not exit within {} s; stderr:\n{}".format(
                timeout, err.decode(errors="replace")))
        self.stdout += out
        self.stderr += err
        return self.proc.returncode

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")


def agent_args(broker_port: int, device: str, state_dir: str, *extra: str) -> List[str]:
    return ["run", "-c", os.path.join(ROOT, "config.yaml"),
            "--set", "mqtt.port={}".format(broker_port),
            "--set", "mqtt.host=127.0.0.1",
            "--set", "device.id={}".format(device),
            "--set", "device.state_dir={}".format(state_dir)] + list(extra)
