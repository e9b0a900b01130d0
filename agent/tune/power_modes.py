"""Jetson power modes for the tuner: nvpmodel query, switch, and restore of the original mode."""

import os
import re
import shutil
import subprocess
from typing import Callable, List, Optional

from ..errors import AgentError

Runner = Callable[[List[str]], str]


def _run(args: List[str]) -> str:
    out = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    text = out.stdout.decode("utf-8", "replace")
    if out.returncode != 0:
        raise AgentError("tune: `{}` failed ({}): {}".format(" ".join(args), out.returncode,
                                                             text.strip()[-300:]))
    return text


class PowerModes(object):
    """nvpmodel where it exists and may be used: `problem` says why not (None when usable).

    `switch(mode)` changes the mode; `restore()` puts back the mode found at the start (call
    it in a finally). `runner` runs a command and returns its output (tests pass their own).
    """

    def __init__(self, runner: Optional[Runner] = None, binary: Optional[str] = None,
                 is_root: Optional[bool] = None) -> None:
        self.binary = binary or shutil.which("nvpmodel")
        self.runner = runner or _run
        root = (os.geteuid() == 0) if is_root is None else is_root
        self.problem = None  # type: Optional[str]
        self.original = None  # type: Optional[int]
        self.current = None  # type: Optional[int]
        if self.binary is None:
            self.problem = "nvpmodel is not on this machine (not a Jetson): power modes not tried"
        elif not root:
            self.problem = ("nvpmodel needs root to switch modes: power modes not tried; fix: "
                            "run `sudo edge-agent tune --power-modes ...`")
        else:
            self.original = self.current = self.query()

    def query(self) -> int:
        """The current mode number (`nvpmodel -q`: 'NV Power Mode: MAXN' then the number)."""
        text = self.runner([self.binary or "nvpmodel", "-q"])
        numbers = re.findall(r"^\s*(\d+)\s*$", text, re.MULTILINE)
        if not numbers:
            raise AgentError("tune: cannot read the power mode from `nvpmodel -q`: {!r}"
                             .format(text.strip()[-200:]))
        return int(numbers[-1])

    def switch(self, mode: int) -> None:
        if self.problem is not None:
            raise AgentError("tune: " + self.problem)
        if mode != self.current:
            self.runner([self.binary or "nvpmodel", "-m", str(int(mode))])
            self.current = int(mode)

    def restore(self) -> None:
        """Back to the mode found at the start (nothing when modes were never usable)."""
        if self.original is not None and self.current != self.original:
            self.runner([self.binary or "nvpmodel", "-m", str(self.original)])
            self.current = self.original
