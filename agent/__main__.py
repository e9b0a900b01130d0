"""edge-agent's command line: the argument parser, and dispatch to agent/cli/ (one module per
command). `edge-agent COMMAND --help` explains each command."""

import argparse
import importlib
import sys
from typing import Any, Callable, Dict, List, Optional

from . import __version__
from .errors import AgentError
from .logs import printable_stdout

DESCRIPTION = """\
edge-agent: a managed inference device. It serves an image classification model on a camera
or file source, publishes predictions and telemetry over MQTT, and installs new models on
command. TensorRT is used where installed (Jetson), ONNX Runtime elsewhere.

quick start (broker on localhost:1883, bundled model and sample photos):
  edge-agent run -c config.yaml --max-frames 20
  mosquitto_sub -t 'edge/+/predictions' -v          # in another terminal
"""

MODELS_DESCRIPTION = ("`models` works on the store under device.state_dir. A running agent "
                      "reads the store's active record at start; to switch a running agent "
                      "without a restart, use `edge-agent send model/activate --device ID` "
                      "instead.")
VIEWS = ("auto", "window", "web")

EPILOG = """\
configuration: every key of config.yaml is optional; --set key.path=value overrides one
(e.g. --set mqtt.host=broker.local --set source.uri=csi://0). `edge-agent check` tells what
this machine lacks for the given config.
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="FILE",
                   help="config.yaml to use (default: built-in defaults; relative paths in the "
                        "file are relative to the file)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set mqtt.port=1884 (repeatable)")


def _command(sub: Any, name: str, help: str, description: str,
             config: bool = True) -> argparse.ArgumentParser:
    """Add subcommand `name`, with -c/--config and --set unless `config` is False."""
    p = sub.add_parser(name, help=help, description=description)
    if config:
        _add_config_args(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version="edge-agent " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_run, _add_bench, _add_check, _add_send, _add_demo, _add_models, _add_build,
                _add_profile, _add_package, _add_keys, _add_verify, _add_serve_models,
                _add_convert, _add_tune, _add_fleet):
        add(sub)
    return parser


def _add_run(sub: Any) -> None:
    """`run`: the daemon."""
    p = _command(sub, "run", "run the daemon: capture, infer, publish over MQTT",
                 "Run the agent until SIGTERM/SIGINT (or the limits below). "
                 "Predictions go to P/D/predictions, telemetry to "
                 "P/D/telemetry, state to the retained P/D/status.")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")


def _add_bench(sub: Any) -> None:
    """`bench`: backend speed against the whole pipeline."""
    p = _command(sub, "bench", "measure raw backend speed vs the full pipeline",
                 "Runs the model on pre-made tensors (raw backend), then the "
                 "whole pipeline on a real source, then a live-like 30 fps "
                 "synthetic source, and prints fps, stage latencies "
                 "p50/p95/p99 and their ratio. No broker needed: messages are "
                 "serialized and spooled locally as in a run.")
    p.add_argument("--model", metavar="NAME|PATH",
                   help="model package name or directory (default: model.name)")
    p.add_argument("--frames", type=int, default=300, metavar="N",
                   help="frames per measurement (default 300)")
    p.add_argument("--source", metavar="URI", help="pipeline source (default: source.uri)")
    p.add_argument("--rounds", type=int, default=5, metavar="R",
                   help="R back-to-back pairs of raw and pipeline, alternating which runs "
                        "first; reports the median of the pairs' ratios and their spread "
                        "(default 5)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def _add_check(sub: Any) -> None:
    """`check`: the environment doctor."""
    p = _command(sub, "check", "environment doctor: what this machine has and lacks",
                 "Checks Python, numpy, OpenCV (+GStreamer), ONNX Runtime, "
                 "TensorRT, pycuda, jtop, power sensors, the broker, the "
                 "source and the model. Exit code 0 when everything the "
                 "config needs is there, 1 otherwise.")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def _add_send(sub: Any) -> None:
    """`send`: the operator side."""
    p = _command(sub, "send", "operator side: send a command to a device, print events",
                 "Publishes COMMAND to P/D/cmd/COMMAND (or the group topic) "
                 "and prints the device's events for it until the command "
                 "is done. Exit code 0 on success.")
    p.add_argument("cmd", metavar="COMMAND",
                   help="ping, model/install, model/activate, model/rollback, model/list, "
                        "model/remove")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", metavar="ID", help="device id")
    target.add_argument("--group", metavar="G", help="device group")
    p.add_argument("--json", dest="payload", metavar="PAYLOAD", default="{}",
                   help="JSON payload, e.g. '{\"name\": \"m\", \"version\": \"2\"}'")
    p.add_argument("--wait", type=float, default=30.0, metavar="S",
                   help="seconds to wait for the final event (default 30)")


def _add_demo(sub: Any) -> None:
    """`demo`: `run` with the live view."""
    p = _command(sub, "demo",
                 "run the agent with the live view (window, or web page when headless)",
                 "Runs the agent like `run`, with a live view of the frames and the top "
                 "predictions, fps, latency and power drawn on them: a window when a "
                 "display and an OpenCV with GUI support are there, otherwise a web page at "
                 "http://view.host:view.port/ (default http://127.0.0.1:8080/; the URL is "
                 "printed) that also charts the last minutes (fps, latency, power, "
                 "inferences/J, temperature) with model swaps and other events marked. "
                 "Stop with Ctrl-C, q or Esc in the window, or closing it.",
                 config=False)
    p.add_argument("-c", "--config", metavar="FILE",
                   help="config.yaml to use (default: built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set view.port=8081 (repeatable)")
    p.add_argument("--source", metavar="URI",
                   help="frame source, e.g. csi://0, v4l2:///dev/video0, rtsp://cam/stream, "
                        "file://photos (default: source.uri)")
    p.add_argument("--view", choices=VIEWS, default="auto",
                   help="window, web, or auto (window when possible; default)")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")


def _add_models(sub: Any) -> None:
    """`models ACTION`: the local model store."""
    p = _command(sub, "models", "list, install, activate, roll back, remove local models",
                 MODELS_DESCRIPTION)
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True
    q = msub.add_parser("list", help="installed models; * marks the active one")
    q.add_argument("--json", action="store_true")
    q = msub.add_parser("install", help="install a package directory, or a model by URL",
                        description="Install a model package directory (model.yaml, model file, "
                                    "labels), or download a model: URL with --name, --version, "
                                    "--sha256 and --manifest (a model.yaml without name/version/"
                                    "sha256).")
    q.add_argument("source", metavar="DIR|URL")
    q.add_argument("--name")
    q.add_argument("--version")
    q.add_argument("--sha256")
    q.add_argument("--manifest", metavar="FILE", help="manifest YAML for a URL install")
    q.add_argument("--labels-url", metavar="URL")
    q.add_argument("--signature", help="base64 ed25519 signature (see README)")
    q.add_argument("--activate", action="store_true", help="make it the active model")
    for action in ("activate", "remove"):
        q = msub.add_parser(action, help="{} NAME VERSION".format(action))
        q.add_argument("name")
        q.add_argument("version")
    msub.add_parser("rollback", help="make the previous version active again")


def _add_build(sub: Any) -> None:
    """`build`: a TensorRT engine from an ONNX file."""
    p = _command(sub, "build", "build a TensorRT engine from an ONNX file",
                 "Like trtexec --onnx --saveEngine: parses the ONNX file, "
                 "checks what this TensorRT is known to reject, builds an "
                 "engine for this exact GPU and writes it with a JSON "
                 "fingerprint beside it.", config=False)
    p.add_argument("onnx", metavar="MODEL.onnx")
    from .backends.base import PRECISIONS
    p.add_argument("--precision", choices=PRECISIONS, default="fp16")
    p.add_argument("--calib", metavar="DIR", help="images for INT8 calibration")
    p.add_argument("--out", metavar="FILE", help="engine file (default: beside the ONNX file)")
    p.add_argument("--workspace-mb", type=int, default=256)
    p.add_argument("--max-batch", type=int, default=1)
    p.add_argument("--dla-core", type=int, default=None)
    p.add_argument("--state-dir", default="./var", help="where the timing cache lives")


def _add_profile(sub: Any) -> None:
    """`profile`: per-layer times of the TensorRT engine."""
    p = _command(sub, "profile", "per-layer times of the model's TensorRT engine",
                 "Like trtexec --dumpProfile: runs the engine of the "
                 "configured model (built and cached as `run` would) and "
                 "prints each layer's average time, slowest first.")
    p.add_argument("--model", metavar="NAME|PATH", help="model package (default: model.name)")
    p.add_argument("--runs", type=int, default=50)


def _add_package(sub: Any) -> None:
    """`package`: an ONNX file and labels made into a checked, optionally signed package."""
    from .cli.package import PRESETS
    from .store.package import ACTIVATIONS, COLORS, LAYOUTS, RESIZE_MODES
    p = _command(sub, "package", "make a model package from an ONNX file and its labels",
                 "Reads the ONNX graph's input and output, writes model.yaml (with sha256 "
                 "and labels_sha256), runs the ONNX check a device runs at install and the "
                 "TensorRT 8.2 (Jetson Nano) preflight, and runs the model once with ONNX "
                 "Runtime on sample images, printing the top-5.", config=False)
    p.add_argument("onnx", metavar="MODEL.onnx")
    p.add_argument("--labels", required=True, metavar="FILE",
                   help="class names, one per line, in output order")
    p.add_argument("--name", required=True, help="model name (letters, digits, _ - .)")
    p.add_argument("--version", required=True, help="model version, e.g. 2 or 2024.1")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="pixel normalisation: " + "; ".join(
                       "{}: {}".format(k, PRESETS[k][0]) for k in sorted(PRESETS)))
    p.add_argument("--mean", type=float, nargs="+", metavar="M",
                   help="three per-channel means (overrides the preset's)")
    p.add_argument("--std", type=float, nargs="+", metavar="S",
                   help="three per-channel std deviations (overrides the preset's)")
    p.add_argument("--color", choices=COLORS, help="channel order the model expects")
    p.add_argument("--layout", choices=LAYOUTS, help="default: read from the input's shape")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="input height and width, when the graph leaves them dynamic")
    p.add_argument("--resize", choices=RESIZE_MODES, help="how frames are fitted to the input")
    p.add_argument("--resize-size", type=int, metavar="N",
                   help="shorter side before the centre crop (shorter_side_crop)")
    p.add_argument("--output", metavar="NAME", help="the score output (default: the first)")
    p.add_argument("--activation", choices=ACTIVATIONS,
                   help="default: none after a Softmax/Sigmoid node, else softmax")
    p.add_argument("--out", metavar="DIR", help="package directory (default: ./NAME-VERSION)")
    p.add_argument("--force", action="store_true", help="replace a package in --out")
    p.add_argument("--sample", metavar="FILE|DIR",
                   help="image(s) for the test run (default: the bundled models/samples)")
    p.add_argument("--top-k", type=int, default=5, metavar="K")
    p.add_argument("--sign", metavar="KEY", help="sign with this ed25519 private key (PEM), "
                                                 "writing DIR/model.sig")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when TensorRT 8.2 (Jetson Nano) would refuse the model")


def _add_keys(sub: Any) -> None:
    """`keys generate`: ed25519 signing keys."""
    p = _command(sub, "keys", "ed25519 keys for signing model packages",
                 "`keys generate --out PREFIX` writes PREFIX.key (private, PEM, mode 0600) "
                 "and PREFIX.pub (public, PEM: each device's updates.public_key_file).",
                 config=False)
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    ksub.required = True
    q = ksub.add_parser("generate", help="write a new key pair PREFIX.key and PREFIX.pub")
    q.add_argument("--out", default="edge-agent-signing", metavar="PREFIX",
                   help="file name prefix (default edge-agent-signing)")


def _add_verify(sub: Any) -> None:
    """`verify DIR`: a package checked as a device checks it."""
    p = _command(sub, "verify", "check a model package as a device would (hashes, ONNX, "
                                "signature)",
                 "Checks DIR's model.yaml, the sha256 of the model and labels, the ONNX "
                 "install check and, with --key, the signature in DIR/model.sig. Exit code "
                 "0 when all pass.", config=False)
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--key", metavar="PUBLIC.pem", help="ed25519 public key to check with")


def _add_serve_models(sub: Any) -> None:
    """`serve-models DIR`: packages over HTTP(S), with their model/install payloads."""
    p = _command(sub, "serve-models", "serve packages over HTTP(S); print model/install "
                                      "payloads",
                 "Serves the packages under DIR and prints, one JSON line per package, the "
                 "exact model/install payload (url, sha256, size, manifest, labels_url, "
                 "labels_sha256, signature) for `edge-agent send model/install --json`. "
                 "With --print-only and --base-url, prints payloads for another server.",
                 config=False)
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    p.add_argument("--base-url", metavar="URL",
                   help="URL the devices reach DIR at (default http(s)://HOST:PORT, with this "
                        "machine's name for HOST when listening on all addresses)")
    p.add_argument("--cert", metavar="FILE", help="TLS certificate chain (PEM): serve HTTPS")
    p.add_argument("--tls-key", metavar="FILE", help="TLS private key (PEM), with --cert")
    p.add_argument("--print-only", action="store_true",
                   help="print the payloads and exit (files served elsewhere)")


def _add_convert(sub: Any) -> None:
    """`convert`: TensorFlow/Keras/TFLite to ONNX (the `convert` extra)."""
    p = _command(sub, "convert", "convert a Keras, SavedModel or TFLite model to ONNX",
                 "Converts with tf2onnx (pip install 'edge-agent[convert]'): a Keras file "
                 "(.keras, .h5), a SavedModel directory or a .tflite file, with a static "
                 "batch and opset 13 (what TensorRT 8.2 takes), then checks the ONNX output "
                 "against the source framework on random input and prints the max abs "
                 "difference. Then run `edge-agent package` on the result.", config=False)
    p.add_argument("model", metavar="MODEL", help=".keras/.h5 file, SavedModel dir or .tflite")
    p.add_argument("--out", required=True, metavar="FILE.onnx")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset (default 13)")
    p.add_argument("--batch", type=int, default=1, help="static batch size (default 1)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="max abs difference allowed vs the source (default 1e-4)")
def _add_tune(sub: Any) -> None:
    """`tune`: candidate setups measured for fps, latency and energy; the best as an overlay."""
    p = _command(sub, "tune", "measure candidate setups for fps, latency and watts; pick one",
                 "Measures each setup the agent controls (ONNX Runtime threads, spin and "
                 "frames in flight (backend.workers); "
                 "TensorRT precision, cpu/gpu preprocessing, workspace, DLA core; nvpmodel "
                 "modes with --power-modes as root) through the whole pipeline, unpaced, "
                 "with bench's machinery: fps, capture-to-publish p50/p99, mean W and "
                 "inferences/J where a power meter covers the inferring device. Prints a "
                 "table, writes a PNG plot of fps against W with the Pareto front, and the "
                 "best setup under the constraints as a config overlay (--out). Example: "
                 "edge-agent tune --max-p99-ms 60 --out tuned.yaml")
    p.add_argument("--model", metavar="NAME|PATH", help="model package (default: model.name)")
    p.add_argument("--frames", type=int, default=200, metavar="N",
                   help="frames per setup and round (default 200)")
    p.add_argument("--rounds", type=int, default=1, metavar="R",
                   help="runs per setup, the median by fps is kept (default 1)")
    p.add_argument("--source", metavar="URI", help="pipeline source (default: source.uri)")
    p.add_argument("--max-watts", type=float, metavar="W", help="constraint: mean watts")
    p.add_argument("--min-fps", type=float, metavar="FPS", help="constraint: frames/s")
    p.add_argument("--max-p99-ms", type=float, metavar="MS",
                   help="constraint: capture-to-publish p99 in ms")
    p.add_argument("--objective", choices=("auto", "efficiency", "fps", "latency"),
                   default="auto", help="what `best` maximises among the setups that meet the "
                   "constraints: inferences/J (efficiency; auto where energy was measured), "
                   "fps, or lowest p99 (latency)")
    p.add_argument("--power-modes", metavar="M,N", help="also try these nvpmodel modes (Jetson, "
                   "as root); the original mode is restored at the end")
    p.add_argument("--max-candidates", type=int, metavar="K", help="measure only the first K")
    p.add_argument("--out", metavar="FILE.yaml",
                   help="write the best setup as a config overlay YAML (merge it into "
                        "config.yaml or pass its keys with --set)")
    p.add_argument("--plot", metavar="FILE.png", default="tune.png",
                   help="the fps-vs-W plot: PNG, or SVG when FILE ends in .svg (default "
                        "tune.png; empty to skip)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
FLEET_DESCRIPTION = """\
The operator's view of many devices, from the agents' own MQTT topics: the retained
P/D/status and P/D/info, the latest P/D/telemetry, and the events. `-c/--config` names the
broker (mqtt.*) and the topic prefix, as for `send`.

  edge-agent fleet ls --group lab               # a table; --json: one JSON object per line
  edge-agent fleet rollout install.json --group lab --canary 10% --batch 20 --window 60
  edge-agent fleet pause --group lab            # or abort; then: fleet rollout --resume
  edge-agent fleet rollback --group lab         # model/rollback on every online device

A rollout sends model/install to a canary stage, then batches; each device must report
`activated`, then its telemetry is watched for --window seconds. It stops and rolls back
every device it changed when more than --max-failures devices fail, or when a device's
inference p50 or end-to-end p99 grows, or its inferences per joule shrink, by more than
--max-regression against its own figures before the update. Its state is kept in a JSON
file (--state, default ./fleet-rollout-GROUP.json, written atomically) so --resume continues
without redoing finished devices. Exit codes: 0 done, 1 rolled back or aborted, 3 paused or
incomplete (devices offline: rerun with --resume), 2 usage or broker errors.
"""

ROLLOUT_DESCRIPTION = """\
Install INSTALL.json (a model/install payload) on group G stage by stage: --canary devices,
then batches of --batch. For each device: its figures before (its telemetry), the install,
its `activated` event, then --window seconds of its telemetry. A device fails when it does not
activate, ends on another model, or its infer p50 or end-to-end p99 grow (inferences/J
shrink) by more than --max-regression against its own figures before. Any regression, or more
than --max-failures failures: every device the rollout changed is rolled back, and it stops.
Offline devices are reported and retried at the end, never counted done.

examples:
  # 1 canary, then batches of 10; 30 s of telemetry each; no failure tolerated, 20 % worse:
  edge-agent fleet rollout install.json --group lab
  # 5 % canary, batches of 50, 2 minutes each; 2 failures tolerated, 10 % worse at most:
  edge-agent fleet rollout install.json --group lab --canary 5% --batch 50 --window 120 \\
      --max-failures 2 --max-regression 0.1
  # all at once, one telemetry message each, gates wide open (e.g. a relabel-only update):
  edge-agent fleet rollout install.json --group lab --canary 100% --window 0 \\
      --max-regression 1000
  edge-agent fleet pause --group lab      # elsewhere: stops after the current stage
  edge-agent fleet rollout --resume --group lab
  edge-agent fleet rollout install.json --group lab --json | jq -c 'select(.event=="failed")'

Output: a live bar per stage on a terminal, one line per step into a pipe, JSON lines with
--json. State: --state FILE (default ./fleet-rollout-G.json). Exit codes: 0 done, 1 rolled
back or aborted, 3 paused or incomplete (rerun with --resume), 2 usage or broker errors.
"""


def _add_fleet(sub: Any) -> None:
    """`fleet`: inventory and staged rollouts."""
    p = sub.add_parser("fleet", help="operator side: fleet inventory and staged rollouts",
                       description=FLEET_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    fleet = p.add_subparsers(dest="fleet_command", metavar="ACTION")
    fleet.required = True
    ls = _command(fleet, "ls", "every device: state, model, fps, latency, power, energy",
                  "One line per device: state (offline devices with the reason: shutdown, "
                  "or `connection lost` from the Last Will), model@version, backend/"
                  "precision, fps, inference p50 (ms), power (W), inferences per joule, "
                  "the hottest thermal zone, when it was last heard from, and its boot id. "
                  "Status and info are retained; telemetry is awaited from each online "
                  "device for at most --wait seconds.")
    ls.add_argument("--group", metavar="G", help="only devices of group G (device.group)")
    ls.add_argument("--json", action="store_true", help="one JSON object per device and line")
    ls.add_argument("--wait", type=float, default=6.0, metavar="S",
                    help="seconds to wait for telemetry from online devices (default 6: "
                         "a little more than the default telemetry.interval_s; 0 = none)")
    ro = _command(fleet, "rollout", "staged model rollout with performance gates",
                  ROLLOUT_DESCRIPTION)
    ro.formatter_class = argparse.RawDescriptionHelpFormatter
    ro.add_argument("install", nargs="?", metavar="INSTALL.json",
                    help="the model/install payload (name, version, url, sha256, manifest...)")
    ro.add_argument("--group", metavar="G", help="the devices of group G (device.group)")
    ro.add_argument("--canary", default="1", metavar="N|P%",
                    help="devices in the first stage: a count or a percentage (default 1)")
    ro.add_argument("--batch", type=int, default=10, metavar="N",
                    help="devices per stage after the canary (default 10)")
    ro.add_argument("--window", type=float, default=30.0, metavar="S",
                    help="seconds of telemetry watched after a stage activates (default 30; "
                         "at least one telemetry message is always awaited)")
    ro.add_argument("--max-failures", type=int, default=0, metavar="N",
                    help="failed devices tolerated before rolling back (default 0)")
    ro.add_argument("--max-regression", type=float, default=0.2, metavar="F",
                    help="tolerated worsening of infer p50, end-to-end p99 and inferences/J "
                         "against the device's own figures before (default 0.2 = 20%%)")
    ro.add_argument("--activate-timeout", type=float, default=600.0, metavar="S",
                    help="seconds a device has to report `activated` (default 600)")
    ro.add_argument("--offline-wait", type=float, default=60.0, metavar="S",
                    help="at the end, seconds to wait for offline devices to come back "
                         "before retrying them once (default 60)")
    ro.add_argument("--state", metavar="FILE",
                    help="the rollout state file (default ./fleet-rollout-GROUP.json)")
    ro.add_argument("--resume", action="store_true",
                    help="continue the rollout in the state file (after a pause or a crash)")
    ro.add_argument("--json", action="store_true", help="JSON lines instead of text")
    for action, text in (("pause", "pause the running rollout after its current stage"),
                         ("abort", "stop the running rollout and roll back what it changed")):
        c = _command(fleet, action, text, text + "; it reads --state (or the group's default "
                                             "state file) at its next step.")
        c.add_argument("--group", metavar="G")
        c.add_argument("--state", metavar="FILE")
    rb = _command(fleet, "rollback", "model/rollback on every online device of a group",
                  "Sends model/rollback to each online device of group G and prints each "
                  "device's outcome; offline devices are listed, not rolled back.")
    rb.add_argument("--group", metavar="G", required=True)
    rb.add_argument("--wait", type=float, default=120.0, metavar="S",
                    help="seconds to wait for the devices' answers (default 120)")


def cmd_bench(args: argparse.Namespace) -> int:
    from .cli.bench import run_bench
    from .cli import config_from_args
    from .logs import configure_logging
    config = config_from_args(args)
    configure_logging("WARNING" if config.logging.level == "INFO" else config.logging.level)
    return run_bench(config, model=args.model, frames=args.frames, source=args.source,
                     as_json=args.json, rounds=max(1, args.rounds))


def _body(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """`function` of agent/cli/`module`.py, imported only when the command runs, so that
    `edge-agent --help` stays quick."""
    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(".cli." + module, __package__), function)(args)
    return run


COMMANDS = {
    "run": _body("run", "cmd_run"),
    "bench": cmd_bench,
    "check": _body("check", "cmd_check"),
    "send": _body("send", "cmd_send"),
    "demo": _body("demo", "cmd_demo"),
    "models": _body("models", "cmd_models"),
    "build": _body("models", "cmd_build"),
    "profile": _body("models", "cmd_profile"),
    "package": _body("package", "cmd_package"),
    "keys": _body("keys", "cmd_keys"),
    "verify": _body("keys", "cmd_verify"),
    "serve-models": _body("serve_models", "cmd_serve_models"),
    "convert": _body("convert", "cmd_convert"),
    "tune": _body("tune", "cmd_tune"),
    "fleet": _body("fleet", "cmd_fleet"),
}  # type: Dict[str, Callable[[argparse.Namespace], int]]


def main(argv: Optional[List[str]] = None) -> int:
    printable_stdout()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except AgentError as exc:
        print("edge-agent: error: {}".format(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
