"""GPU check of the whole agent: REAL pycuda, REAL NVML, the TensorRT TEST DOUBLE.

No TensorRT exists on the GPU machine; the double named with `--trt-double tests/support/doubles` stands
in for it there (it runs the ONNX model with ONNX Runtime on the CPU, reading and writing real
device memory through pycuda).
What this checks for real, in the agent's own threads:
- the engine loaded by the main thread, served by the inference thread with GPU preprocessing
  (one CUDA kernel per 1280x720 frame) through `release_thread()`;
- a model swap prepared in a separate thread (as the model manager does), served by the
  inference thread, the old backend closed by a third thread;
- telemetry with NVML power and the trapezoid energy per inference from the sampler;
- no CUDA context left current anywhere at the end.

    python3 tools/gpu/check_agent_on_gpu.py [--trt-double tests/support/doubles] [--frames 300]
        [--out result.json]
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import trt_choice  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--out", default=None)
    trt_choice.add_argument(parser)
    args = parser.parse_args()
    import pycuda.driver as drv
    drv.init()
    print("TensorRT:", trt_choice.install(args.trt_double))
    from agent.daemon import Agent
    from agent.cli.bench import LocalSink
    from agent.config import load_config
    from agent.store.package import ModelPackage
    from agent.spool import Spool

    state = tempfile.mkdtemp(prefix="edge-agent-gpu-")
    config = load_config(os.path.join(ROOT, "config.yaml"), [
        "device.id=h100", "device.state_dir=" + state, "backend.kind=tensorrt",
        "backend.precision=fp16", "backend.preprocess=gpu", "telemetry.power=nvml",
        "telemetry.interval_s=1", "telemetry.sample_hz=20",
        "source.uri=synthetic://?width=1280&height=720&fps=30"])
    spool = Spool(os.path.join(state, "spool.db"))
    sink = LocalSink(spool)
    agent = Agent(config, max_frames=args.frames, link=sink)
    telemetry, predictions, result = [], [], {}
    agent.telemetry_listeners.append(telemetry.append)
    agent.listeners.append(lambda frame, p: predictions.append(p))
    swap = {}

    def swapper():
        """Like the model manager: prepare a second backend here, hand it over."""
        while (agent.inference is None or agent.inference.frames_done < args.frames // 3) \
                and not agent.stop.is_set():
            agent.stop.wait(0.05)
        try:
            package = ModelPackage.load(os.path.join(ROOT, "models", "efficientnet_lite0"))
            t0 = time.monotonic()
            backend = agent.loader.prepare(package, lambda *a: None)
            swap["prepare_s"] = round(time.monotonic() - t0, 3)
            swap["context_current_in_manager_after_release"] = \
                drv.Context.get_current() is not None
            t0 = time.monotonic()
            agent.backends.swap(backend)
            swap["swap_s"] = round(time.monotonic() - t0, 3)
            swap["frame_at_swap"] = agent.inference.frames_done
        except Exception as exc:  # reported, the check fails
            swap["error"] = repr(exc)

    threading.Thread(target=swapper, name="model-manager").start()
    t0 = time.monotonic()
    code = agent.run()
    wall = time.monotonic() - t0
    spool.close()
    seqs = [p["frame_seq"] for p in predictions]
    gaps = [b - a for a, b in zip([p["ts"] for p in predictions], [p["ts"] for p in predictions][1:])]
    result.update({
        "exit_code": code, "frames": len(predictions), "wall_s": round(wall, 2),
        "errors": agent.stats.errors, "dropped": agent.slot.dropped,
        "backend": agent.backends.describe(), "swap": swap,
        "max_gap_ms": round(1000 * max(gaps), 1) if gaps else None,
        "max_gap_after_prediction": gaps.index(max(gaps)) + 1 if gaps else None,
        "largest_gaps_ms": sorted(((round(1000 * g, 1), i + 1) for i, g in enumerate(gaps)),
                                  reverse=True)[:5],
        "model_changed_at_prediction": next((i for i, p in enumerate(predictions)
                                             if i and p["model"] != predictions[0]["model"]),
                                            None),
        "frame_seq_contiguous": seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        if seqs else None,
        "median_gap_ms": round(1000 * sorted(gaps)[len(gaps) // 2], 1) if gaps else None,
        "idle_w": agent.reporter.idle_w,
        "telemetry": [{k: t.get(k) for k in ("fps", "power", "energy", "gpu_load",
                                             "temperature_c", "latency_ms")}
                      for t in telemetry],
        "context_current_in_main_at_end": drv.Context.get_current() is not None,
    })
    print(json.dumps(result, indent=1, default=str))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=1, default=str)
    with_energy = [t for t in telemetry if (t.get("energy") or {}).get("mj_per_inference")]
    ok = (code == 0 and "error" not in swap and agent.stats.errors == 0 and with_energy and
          not result["context_current_in_main_at_end"] and
          not swap.get("context_current_in_manager_after_release"))
    last = with_energy[-1] if with_energy else {}
    print("SUMMARY frames {} errors {} swap prepare {} s at frame {}; max gap {} ms (median {} "
          "ms); NVML {} W, {} mJ/inference, {} inferences/J, GPU load {}".format(
              len(predictions), agent.stats.errors, swap.get("prepare_s"),
              swap.get("frame_at_swap"), result["max_gap_ms"], result["median_gap_ms"],
              (last.get("power") or {}).get("total_w"),
              (last.get("energy") or {}).get("mj_per_inference"),
              (last.get("energy") or {}).get("inferences_per_joule"), last.get("gpu_load")))
    print("CHECK PASSED" if ok else "CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
