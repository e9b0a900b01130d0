"""What one browser watching the live view costs the agent: its CPU with nobody watching, with
one headless Chromium on the page, and with nobody again.

With `--client mjpeg` the watcher is a plain reader of /stream.mjpg in this process instead
(what a video player costs, for comparison with the page's one-JPEG-per-frame fetches).

Starts `python -m agent demo --view web` (the bundled model on ONNX Runtime, the sample photos
at --fps), lets it warm up, then measures the agent process's CPU time (utime + stime from
/proc/PID/stat) over --seconds in each phase: idle, watched (Chromium on the page), idle
again. Prints one line per phase and a JSON summary. Chromium's own CPU is measured too (it
runs on the viewer's machine, not the device, in real use). Run from the repository root:
`PYTHONPATH=. python3 tools/view/cpu_with_browser.py [--seconds 30] [--fps 15]`.
No broker is needed: the agent spools while none answers, the same in every phase.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

CLOCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its waited-for children) in seconds."""
    with open("/proc/{}/stat".format(pid)) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / float(CLOCK)


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and all its descendants (Chromium runs several)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += cpu_seconds(current)
            with open("/proc/{0}/task/{0}/children".format(current)) as handle:
                todo.extend(int(c) for c in handle.read().split())
        except (OSError, ValueError):
            continue
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_frames(base: str, timeout: float, agent: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise SystemExit("the agent exited ({}): {}".format(
                agent.returncode, agent.stderr.read().decode(errors="replace")[-2000:]))
        try:
            with urllib.request.urlopen(base + "/state.json", timeout=2) as resp:
                if json.loads(resp.read().decode()).get("seq", 0) >= 2:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("the agent's view showed no frames within {:.0f} s".format(timeout))


def read_stream(url: str, stop: threading.Event) -> None:
    """Read an MJPEG stream and drop it, until `stop`."""
    with urllib.request.urlopen(url, timeout=30) as resp:
        while not stop.is_set() and resp.read(1 << 16):
            pass


def measure(pid: int, seconds: float, other: int = 0) -> dict:
    start_wall = time.monotonic()
    start_cpu = cpu_seconds(pid)
    start_other = tree_cpu_seconds(other) if other else 0.0
    time.sleep(seconds)  # a benchmark's measuring window, not a synchronisation
    wall = time.monotonic() - start_wall
    out = {"agent_cpu_percent": round(100.0 * (cpu_seconds(pid) - start_cpu) / wall, 1),
           "seconds": round(wall, 1)}
    if other:
        out["browser_cpu_percent"] = round(
            100.0 * (tree_cpu_seconds(other) - start_other) / wall, 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="each phase (default 30)")
    parser.add_argument("--warmup", type=float, default=10.0, help="before measuring (10)")
    parser.add_argument("--fps", type=float, default=15.0, help="source frames per second")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--client", choices=("page", "mjpeg"), default="page",
                        help="who watches: headless Chromium on the page (default), or a "
                        "reader of /stream.mjpg")
    args = parser.parse_args()
    port = free_port()
    base = "http://127.0.0.1:{}".format(port)
    state = tempfile.mkdtemp(prefix="view-cpu-")
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "demo", "--view", "web", "-c", "config.yaml",
         "--set", "view.port={}".format(port), "--set", "device.state_dir=" + state,
         "--set", "source.uri=file://models/samples", "--set", "source.fps={}".format(args.fps),
         "--set", "mqtt.host=127.0.0.1", "--set", "mqtt.port={}".format(free_port()),
         "--set", "logging.level=WARNING"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # WARNING and up: a few lines
    browser = None
    stop = threading.Event()
    profile = tempfile.mkdtemp(prefix="view-cpu-chromium-")
    results = {}
    try:
        wait_for_frames(base, 120, agent)
        print("agent up (pid {}), {} fps source; warming up {:.0f} s".format(
            agent.pid, args.fps, args.warmup), flush=True)
        time.sleep(args.warmup)
        results["nobody"] = measure(agent.pid, args.seconds)
        print("nobody watching:  {}".format(results["nobody"]), flush=True)
        reader = None
        if args.client == "mjpeg":
            reader = threading.Thread(target=read_stream, args=(base + "/stream.mjpg", stop),
                                      daemon=True)
            reader.start()
        else:
            browser = subprocess.Popen(
                [args.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--user-data-dir=" + profile, "--window-size=1280,900",
                 "--remote-debugging-port=0", base + "/"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(args.warmup)
        results["watched"] = measure(agent.pid, args.seconds,
                                         browser.pid if browser is not None else 0)
        print("one {}:      {}".format(args.client, results["watched"]), flush=True)
        if browser is not None:
            browser.terminate()
            browser.wait(20)
            browser = None
        stop.set()
        if reader is not None:
            reader.join(10)
        time.sleep(args.warmup)
        results["nobody_again"] = measure(agent.pid, args.seconds)
        print("nobody again:     {}".format(results["nobody_again"]), flush=True)
    finally:
        if browser is not None:
            browser.kill()
            browser.wait(10)
        agent.send_signal(signal.SIGINT)
        try:
            agent.wait(60)
        except subprocess.TimeoutExpired:
            agent.kill()
        shutil.rmtree(profile, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
    idle = (results["nobody"]["agent_cpu_percent"] +
            results["nobody_again"]["agent_cpu_percent"]) / 2.0
    results["difference_percent_of_a_core"] = round(
        results["watched"]["agent_cpu_percent"] - idle, 1)
    results["cores"] = os.cpu_count()
    results["client"] = args.client
    results["fps"] = args.fps
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
