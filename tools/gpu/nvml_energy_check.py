"""Cross-check on a real NVIDIA GPU: PowerSampler's trapezoid energy vs NVML's energy counter.

Runs agent.power's NVML reader and PowerSampler while the GPU idles, then multiplies matrices
with torch for --work-s seconds, then idles again; over the same sample instants it compares
the trapezoid integral of nvmlDeviceGetPowerUsage with nvmlDeviceGetTotalEnergyConsumption,
and prints both, the difference in %, the sample count and rate, and the cost of one read().
Run from the repository root: `PYTHONPATH=. python3 tools/gpu/nvml_energy_check.py`.
"""

import argparse
import json
import os
import statistics
import sys
import threading
import time

from agent.power import GpuLoadReader, NvmlPowerReader, PowerSampler


def read_cost_us(fn, calls):
    """Per-call wall time of fn() in microseconds: mean, p50, p99."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e6)
    times.sort()
    return {"mean": statistics.mean(times), "p50": times[len(times) // 2],
            "p99": times[int(len(times) * 0.99)], "calls": calls}


def pct(a, b):
    return None if a is None or not b else 100.0 * (a - b) / b


def compare(label, later, earlier):
    """One window of one sampler: trapezoid joules vs counter joules over the same samples."""
    window = later.since(earlier)
    trapezoid = later.trapezoid_since(earlier)
    counter = window.joules if window.method == "counter" else None
    row = {"window": label, "seconds": window.seconds, "samples": window.samples,
           "samples_per_s": window.samples / window.seconds if window.seconds else None,
           "trapezoid_j": trapezoid, "counter_j": counter,
           "diff_pct": pct(trapezoid, counter),
           "mean_w_counter": counter / window.seconds if counter and window.seconds else None}
    print("  {:<28} {:6.2f} s  samples {:4d} ({:5.1f}/s)  trapezoid {:9.2f} J  counter {:9.2f} J"
          "  diff {:+6.2f} %".format(label, row["seconds"], row["samples"],
                                     row["samples_per_s"] or 0.0, trapezoid or float("nan"),
                                     counter or float("nan"), row["diff_pct"] or float("nan")))
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", type=int, default=0)
    parser.add_argument("--idle-s", type=float, default=3.0)
    parser.add_argument("--work-s", type=float, default=20.0)
    parser.add_argument("--tail-s", type=float, default=3.0)
    parser.add_argument("--hz", type=float, default=20.0)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."),
                                                       "nvml_energy_check.json"))
    args = parser.parse_args()

    import torch  # only this check needs it

    usage = NvmlPowerReader(indices=[args.gpu], power_field="usage")
    instant = NvmlPowerReader(indices=[args.gpu], power_field="instant")
    no_counter = NvmlPowerReader(indices=[args.gpu], energy_counter=False)
    nvml = usage.nvml
    handle = usage.handles[0][1]
    info = dict(usage.describe())
    info["driver"] = nvml.nvmlSystemGetDriverVersion()
    info["instant_power_field"] = instant.power_field == "instant"
    print("GPU:", json.dumps(info))
    if not usage.has_energy_counter:
        print("this GPU has no NVML total-energy counter: nothing to compare against")
        return 2

    costs = {
        "read_usage": read_cost_us(usage.read, 2000),
        "read_instant": read_cost_us(instant.read, 2000),
        "read_without_counter": read_cost_us(no_counter.read, 2000),
        "nvmlDeviceGetPowerUsage": read_cost_us(lambda: nvml.nvmlDeviceGetPowerUsage(handle),
                                                2000),
        "nvmlDeviceGetTotalEnergyConsumption": read_cost_us(
            lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(handle), 2000),
    }
    for name, cost in costs.items():
        print("cost of {:<38} mean {:7.1f} us  p50 {:7.1f} us  p99 {:7.1f} us".format(
            name + "()", cost["mean"], cost["p50"], cost["p99"]))

    device = torch.device("cuda", args.gpu)
    a = torch.randn(args.size, args.size, device=device, dtype=torch.bfloat16)
    b = torch.randn(args.size, args.size, device=device, dtype=torch.bfloat16)
    torch.cuda.synchronize(device)

    stop = threading.Event()
    samplers = {"usage": PowerSampler(usage, stop, sample_hz=args.hz).start()}
    if instant.power_field == "instant":
        samplers["instant"] = PowerSampler(instant, stop, sample_hz=args.hz).start()
    load = GpuLoadReader(nvml=usage)
    try:
        cpu_start, wall_idle = time.process_time(), time.monotonic()
        idle_w = samplers["usage"].measure_idle(args.idle_s)
        sampler_cpu_pct = 100.0 * (time.process_time() - cpu_start) / (
            time.monotonic() - wall_idle)
        print("idle baseline: {:.1f} W over {:.1f} s; process CPU while {} samplers ran: "
              "{:.1f} % of one core".format(idle_w or float("nan"), args.idle_s,
                                            len(samplers), sampler_cpu_pct))
        start = {k: s.totals() for k, s in samplers.items()}
        direct_start = nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0
        wall_start = time.monotonic()
        matmuls = 0
        loads = []
        while time.monotonic() - wall_start < args.work_s:
            for _ in range(20):
                torch.matmul(a, b)
            matmuls += 20
            torch.cuda.synchronize(device)
            loads.append(load.read())
        work_s = time.monotonic() - wall_start
        work_end = {k: s.totals() for k, s in samplers.items()}
        tail_from = work_end["usage"].ts
        samplers["usage"].wait_for(lambda t: t.ts - tail_from >= args.tail_s,
                                   timeout=args.tail_s + 5.0)
        end = {k: s.totals() for k, s in samplers.items()}
        direct_end = nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0
    finally:
        stop.set()
        for sampler in samplers.values():
            sampler.join(5.0)

    tflops = 2.0 * args.size ** 3 * matmuls / work_s / 1e12
    busy = [x for x in loads if x is not None]
    print("work: {} matmuls {}^3 bf16 in {:.1f} s ({:.0f} TFLOP/s), NVML utilisation mean "
          "{:.0f} %".format(matmuls, args.size, work_s, tflops,
                            statistics.mean(busy) if busy else float("nan")))
    rows = []
    for key, sampler in samplers.items():
        print("sampler on power '{}' ({} errors):".format(key, sampler.errors))
        rows.append(dict(compare(key + ": work + tail", end[key], start[key]), reader=key))
        rows.append(dict(compare(key + ": work only", work_end[key], start[key]), reader=key))
    window = end["usage"].since(start["usage"])
    energy = window.per_inference(matmuls, idle_w=idle_w)
    print("direct counter reads around the window: {:.2f} J".format(direct_end - direct_start))
    print("energy per matmul (counter, work + tail): {}".format(json.dumps(energy)))
    summary = {"gpu": info, "read_cost_us": costs, "idle_w": idle_w, "matmuls": matmuls,
               "sampler_cpu_pct_idle": sampler_cpu_pct, "sample_hz": args.hz,
               "work_s": work_s, "tflops": tflops, "windows": rows,
               "direct_counter_j": direct_end - direct_start, "energy": energy,
               "python": sys.version.split()[0], "torch": torch.__version__}
    try:
        with open(args.json, "w") as handle_out:
            json.dump(summary, handle_out, indent=2)
    except OSError as exc:
        print("could not write {}: {}".format(args.json, exc))
    for reader in (usage, instant, no_counter):
        reader.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
