#!/usr/bin/env python3
"""Where a running agent's CPU goes, per OS thread: the agent's Python threads by name and
ONNX Runtime's native worker threads (which py-spy cannot name), over a timed window.

Starts a private Mosquitto and `edge-agent run` publishing at QoS 1 on the sample photos,
unpaced (as tools/bench/external_qos1.py does), lets it warm up, then reads each thread's CPU
time from /proc/PID/task/*/stat at the start and end of `--seconds`, and prints each thread's
share of a core next to the predictions per second counted at the broker. With `--py-spy
PATH`, py-spy (from PyPI) records the same window (`--threads --idle`, raw format) into
`--profile FILE` for tools/bench/profile_summary.py.

    python tools/bench/thread_cpu.py [--seconds 20] [--set KEY=VALUE ...] [--py-spy PATH]

Linux only. Names come from py-spy's `dump` where given, else the OS thread name.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import external_qos1  # noqa: E402  (start_broker, AgentProcess)


def thread_times(pid: int) -> Dict[int, Tuple[str, float]]:
    """{tid: (OS thread name, CPU seconds user+system)} of every thread of `pid`."""
    tick = float(os.sysconf("SC_CLK_TCK"))
    out = {}
    for tid in os.listdir("/proc/{}/task".format(pid)):
        try:
            with open("/proc/{}/task/{}/stat".format(pid, tid)) as handle:
                text = handle.read()
        except OSError:  # the thread ended
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def python_names(py_spy: Optional[str], pid: int) -> Dict[int, str]:
    """{native tid: Python thread name} from `py-spy dump` (empty without py-spy)."""
    if not py_spy:
        return {}
    text = subprocess.run([py_spy, "dump", "--json", "--pid", str(pid)], stdout=subprocess.PIPE,
                          timeout=60).stdout.decode()
    return {t["os_thread_id"]: t.get("thread_name") or "python"
            for t in json.loads(text) if t.get("os_thread_id")}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window (20)")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds after the first prediction before the window (5)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the agent (repeatable)")
    parser.add_argument("--py-spy", dest="py_spy", metavar="PATH",
                        help="py-spy binary: name the threads and record the window")
    parser.add_argument("--profile", default="agent-profile.txt",
                        help="where py-spy writes the window's samples (agent-profile.txt)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    loadavg = [round(v, 2) for v in os.getloadavg()]
    tmp = tempfile.mkdtemp(prefix="thread-cpu-")
    broker, port = external_qos1.start_broker(tmp)
    agent = None
    spy = None
    try:
        agent = external_qos1.AgentProcess(args.set, port, tmp)
        agent.wait_started()
        time.sleep(args.warmup)  # the agent's warm-up
        pid = agent.proc.pid
        names = python_names(args.py_spy, pid)
        if args.py_spy:
            spy = subprocess.Popen([args.py_spy, "record", "--pid", str(pid), "-r", "100",
                                    "-d", str(int(args.seconds)), "--threads", "--idle",
                                    "-f", "raw", "-o", args.profile, "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        before = thread_times(pid)
        time.sleep(args.seconds)  # the measured window
        after = thread_times(pid)
        t1 = time.monotonic()
        fps = agent.fps_between(t0, t1)
        if spy is not None:
            spy.wait(args.seconds + 60)
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait(10)
        if agent is not None:
            agent.close()
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    span = t1 - t0
    rows = []
    for tid, (osname, cpu) in after.items():
        used = cpu - before.get(tid, (osname, 0.0))[1]
        rows.append({"tid": tid, "name": names.get(tid) or osname,
                     "cpu_percent": round(100.0 * used / span, 1)})
    rows.sort(key=lambda r: -r["cpu_percent"])
    total = round(sum(r["cpu_percent"] for r in rows), 1)
    result = {"loadavg_before": loadavg, "seconds": round(span, 2), "overrides": args.set,
              "predictions_per_s_at_broker": round(fps, 2), "cpu_percent_total": total,
              "cpu_ms_per_prediction": round(total * 10.0 / fps, 2) if fps else None,
              "threads": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print("load average before: {}; {:.1f} predictions/s at the broker; agent CPU {}% "
          "({} ms per prediction)".format(loadavg, fps, total, result["cpu_ms_per_prediction"]))
    for row in rows:
        if row["cpu_percent"] >= 0.1:
            print("  {:>7}  {:<24} {:6.1f} % of a core".format(row["tid"], row["name"],
                                                            row["cpu_percent"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
