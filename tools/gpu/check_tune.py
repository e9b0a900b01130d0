"""GPU check of `edge-agent tune`: REAL pycuda and NVML, the TensorRT TEST DOUBLE for the engine.

No TensorRT exists on the GPU machine; `--trt-double tests/support/doubles` stands in for it (it
runs the ONNX model with ONNX Runtime on the CPU, reading and writing real device memory through
pycuda). So the candidates' preprocessing (cpu, or gpu through the pinned frame pool and a real
CUDA kernel) and the NVML power meter are real; the engine's time is ONNX Runtime's on the
host CPU, and NVML covers only the GPU, which tune states in its table.

    python3 tools/gpu/check_tune.py --trt-double tests/support/doubles [--pycuda-double] -- \\
        --frames 300 --rounds 2 --json
Everything after `--` goes to `edge-agent tune`; this script adds the TensorRT backend, NVML
power and a 1280x720 synthetic source with --set (later --set options override them).
`--pycuda-double` (for a dry run without a GPU) also installs the pycuda and NVML doubles.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import trt_choice  # noqa: E402

SETTINGS = ["backend.kind=tensorrt", "backend.precision=fp16", "telemetry.power=nvml",
            "source.uri=synthetic://?width=1280&height=720&fps=1000"]


def main() -> int:
    argv = sys.argv[1:]
    rest = []  # type: list
    if "--" in argv:
        at = argv.index("--")
        argv, rest = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    trt_choice.add_argument(parser)
    parser.add_argument("--pycuda-double", action="store_true",
                        help="dry run: the pycuda and NVML doubles from --trt-double's folder")
    args = parser.parse_args(argv)
    if args.pycuda_double:
        sys.path.insert(0, os.path.abspath(args.trt_double or "tests/support/doubles"))
        import pycuda_double
        import nvml_double
        pycuda_double.install([{"name": "NVIDIA H200 (double)", "cc": (9, 0),
                                "memory": 140 << 30}])
        sys.modules["pynvml"] = nvml_double.FakeNvml([nvml_double.FakeGpu(power_mw=80000)])
    print("TensorRT:", trt_choice.install(args.trt_double), flush=True)
    from agent.__main__ import main as edge_agent
    options = []
    for setting in SETTINGS:
        options += ["--set", setting]
    return edge_agent(["tune"] + options + rest)


if __name__ == "__main__":
    sys.exit(main())
