"""Unit tests of config, manifest, preprocessing, postprocessing and sources."""

import os
import threading

import cv2
import numpy as np
import pytest

from agent.config import load_config
from agent.errors import ConfigError, ModelError, SourceError
from agent.store.package import ModelPackage
from agent.pipeline.frames import Frame, FrameSlot
from agent.postprocess import Classifier, activate
from agent.preprocess import Preprocessor, plan_resize
from agent.sources import make_source
from conftest import MODEL_DIR, ROOT, SAMPLES, requires


# ---------------------------------------------------------------- config
def test_defaults_match_the_documented_config_file():
    documented = load_config(os.path.join(ROOT, "config.yaml")).to_dict()
    builtin = load_config(None).to_dict()
    assert documented == builtin


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["mqtt.port=1884", "backend.validate.frames=4",
                             "updates.allowed_schemes=[https]", "device.id=cam-1",
                             "predictions.max_rate_hz=2.5"])
    assert cfg.mqtt.port == 1884 and cfg.backend.validate.frames == 4
    assert cfg.updates.allowed_schemes == ["https"] and cfg.device.id == "cam-1"
    assert cfg.predictions.max_rate_hz == 2.5


def test_secrets_are_redacted(tmp_path):
    (tmp_path / "pw").write_text("hunter2\n")
    cfg = load_config(None, ["mqtt.password_file={}".format(tmp_path / "pw"), "mqtt.username=u",
                             "source.uri=rtsp://cam:hunter2@10.0.0.5/live"])
    red = cfg.redacted()
    assert red["mqtt"]["password_file"] == "***" and red["mqtt"]["username"] == "u"
    assert red["source"]["uri"] == "rtsp://cam:***@10.0.0.5/live"
    assert "hunter2" not in str(red)


PATH_FILES = ("mqtt.password_file", "mqtt.tls.ca_file", "mqtt.tls.cert_file",
              "mqtt.tls.key_file", "updates.public_key_file", "updates.ca_file")


def test_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    """Every path key, not only state_dir: the agent's working directory (/ under systemd)
    must not matter."""
    conf = tmp_path / "etc"
    (conf / "keys").mkdir(parents=True)
    (conf / "calib").mkdir()
    lines = {}
    for key in PATH_FILES:
        name = key.replace(".", "_")
        (conf / "keys" / name).write_text("x")
        lines[key] = "keys/" + name
    text = ("device: {{state_dir: data}}\nbackend: {{calibration_dir: calib}}\n"
            "mqtt: {{password_file: {}, tls: {{ca_file: {}, cert_file: {}, key_file: {}}}}}\n"
            "updates: {{public_key_file: {}, ca_file: {}}}\n").format(
                *[lines[k] for k in PATH_FILES])
    (conf / "c.yaml").write_text(text)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(str(elsewhere))
    cfg = load_config(str(conf / "c.yaml"))
    assert cfg.device.state_dir == str(conf / "data")
    assert cfg.resolve(cfg.device.state_dir) == str(conf / "data")
    assert cfg.backend.calibration_dir == str(conf / "calib")
    for key in PATH_FILES:
        assert cfg.get(key) == str(conf / "keys" / key.replace(".", "_")), key


@pytest.mark.parametrize("key", PATH_FILES)
def test_a_missing_file_key_is_refused_with_its_path(tmp_path, key):
    (tmp_path / "c.yaml").write_text("{}\n")
    overrides = ["{}=missing.pem".format(key)]
    if key in ("mqtt.tls.cert_file", "mqtt.tls.key_file"):  # they go together
        (tmp_path / "other.pem").write_text("x")
        other = "mqtt.tls.key_file" if key == "mqtt.tls.cert_file" else "mqtt.tls.cert_file"
        overrides.append("{}={}".format(other, tmp_path / "other.pem"))
    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path / "c.yaml"), overrides)
    assert str(err.value).startswith("config: {}: {} does not exist".format(
        key, tmp_path / "missing.pem")), str(err.value)


@pytest.mark.parametrize("value, message", [
    (".nan", "config: telemetry.interval_s: nan is not a finite number"),
    (".inf", "config: telemetry.interval_s: inf is not a finite number"),
])
def test_non_finite_numbers_are_refused(value, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["telemetry.interval_s=" + value])
    assert message in str(err.value)
    for key in ("predictions.max_rate_hz", "predictions.min_score", "source.fps",
                "backend.validate.min_top1_agreement", "telemetry.sample_hz",
                "updates.max_latency_factor"):
        with pytest.raises(ConfigError) as err:
            load_config(None, ["{}=.nan".format(key)])
        assert "config: {}: nan is not a finite number".format(key) in str(err.value)


def test_state_dir_must_be_a_directory_on_disk(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError) as err:
        load_config(None, ["device.state_dir={}".format(tmp_path / "afile")])
    assert "config: device.state_dir: {} is a file".format(tmp_path / "afile") in str(err.value)
    for bad in ("/proc/edge", "/sys/kernel/edge-agent", "/proc"):
        with pytest.raises(ConfigError) as err:
            load_config(None, ["device.state_dir=" + bad])
        assert "config: device.state_dir: {} is on the kernel's".format(bad) in str(err.value)


@pytest.mark.parametrize("data, message", [
    ({"updates": {"allowed_schemes": ["gopher"]}}, "updates.allowed_schemes[0]: 'gopher'"),
    ({"source": {"loop": "yes"}}, "source.loop: 'yes' must be true or false"),
    ({"mqtt": {"prefix": "a/#"}}, "mqtt.prefix"),
    ({"backend": {"dla_core": 2}}, "backend.dla_core: 2 is above the maximum 1"),
])
def test_invalid_values(data, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, data=data)
    assert message in str(err.value)


# ---------------------------------------------------------------- manifest
def _manifest(**changes):
    raw = {"name": "m", "version": "1", "file": "model.onnx",
           "input": {"name": "input", "shape": [1, 3, 8, 8], "layout": "NCHW", "color": "RGB",
                     "resize": {"mode": "stretch"}, "mean": [0, 0, 0], "std": [1, 1, 1]},
           "output": {"activation": "softmax"}}
    for key, value in changes.items():
        target = raw
        parts = key.split(".")
        for p in parts[:-1]:
            target = target[p]
        target[parts[-1]] = value
    return raw


@pytest.mark.parametrize("key, value, message", [
    ("name", "../x", "may only use letters"),
    ("version", "a/b", "may only use letters"),
    ("file", "../../etc/passwd", "plain file name"),
    ("input.shape", [1, 3, 224], "four positive integers"),
    ("input.shape", [1, 1, 8, 8], "3-channel"),
    ("input.std", [1, 0, 1], "must not contain 0"),
    ("input.shape", [1, 3, 100000, 100000], "asks for 10000000000 pixels per inference"),
    ("input.shape", [1, 3, 8, 5000], "over the limit of 16777216 (each side at most 4096)"),
    ("input.shape", [64, 3, 1024, 1024], "asks for 67108864 pixels per inference"),
    ("input.resize", {"mode": "shorter_side_crop", "size": 10 ** 6},
     "input.resize.size: 1000000 is over the limit of 8192"),
    ("input.resize", {"mode": "zoom"}, "'zoom' is not one of"),
    ("input.resize", {"mode": "shorter_side_crop", "size": 4}, "input.resize.size"),
    ("output", {"activation": "relu"}, "'relu' is not one of"),
    ("sha256", "abc", "not 64 hex digits"),
])
def test_bad_manifests_name_the_field(key, value, message):
    with pytest.raises(ModelError) as err:
        ModelPackage.from_dict("/tmp", _manifest(**{key: value}), "pkg/model.yaml")
    assert message in str(err.value) and "pkg/model.yaml" in str(err.value)


def test_bundled_package_verifies():
    pkg = ModelPackage.load(MODEL_DIR)
    assert pkg.verify() == pkg.sha256 and len(pkg.labels) == 1000


# ---------------------------------------------------------------- preprocessing
def _spec(mode, size=None, shape=(1, 3, 4, 6), color="RGB", layout="NCHW"):
    raw = _manifest()
    raw["input"]["shape"] = list(shape)
    raw["input"]["layout"] = layout
    raw["input"]["color"] = color
    raw["input"]["resize"] = {"mode": mode, "size": size}
    raw["input"]["mean"] = [10.0, 20.0, 30.0]
    raw["input"]["std"] = [2.0, 4.0, 8.0]
    return ModelPackage.from_dict("/tmp", raw).input


def test_plans():
    p = plan_resize(_spec("shorter_side_crop", 8, shape=(1, 3, 4, 4)), 720, 1280)
    assert (p.src_w, p.src_h) == (360.0, 360.0) and (p.src_x, p.src_y) == (460.0, 180.0)
    p = plan_resize(_spec("letterbox", shape=(1, 3, 100, 100)), 50, 100)
    assert (p.dst_x, p.dst_y, p.dst_w, p.dst_h) == (0, 25, 100, 50)
    p = plan_resize(_spec("stretch"), 7, 9)
    assert (p.dst_w, p.dst_h, p.src_w, p.src_h) == (6, 4, 9.0, 7.0)


def test_normalization_color_and_layout():
    frame = np.zeros((4, 6, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 50, 60, 70  # B, G, R
    out = Preprocessor(_spec("stretch"))(frame)
    assert out.shape == (1, 3, 4, 6) and out.dtype == np.float32
    # RGB order: R=70 -> (70-10)/2, G=60 -> (60-20)/4, B=50 -> (50-30)/8
    assert np.allclose(out[0, :, 0, 0], [30.0, 10.0, 2.5])
    out = Preprocessor(_spec("stretch", color="BGR", shape=(1, 4, 6, 3), layout="NHWC"))(frame)
    assert out.shape == (1, 4, 6, 3)
    assert np.allclose(out[0, 0, 0], [20.0, 10.0, 5.0])


def test_letterbox_pads_with_the_mean():
    frame = np.full((2, 6, 3), 200, np.uint8)
    out = Preprocessor(_spec("letterbox", shape=(1, 3, 6, 6)))(frame)
    assert np.allclose(out[0, :, 0, :], 0.0)      # padding row normalises to zero
    assert not np.allclose(out[0, :, 3, :], 0.0)  # image rows do not


def test_center_crop_takes_the_middle():
    frame = np.zeros((100, 300, 3), np.uint8)
    frame[:, 100:200] = 255  # white centre square
    out = Preprocessor(_spec("shorter_side_crop", 10, shape=(1, 3, 10, 10), color="BGR"))(frame)
    # BGR white normalised: (255-10)/2, (255-20)/4, (255-30)/8 in every pixel.
    assert np.allclose(out[0, :, :, :].reshape(3, -1).min(axis=1), [122.5, 58.75, 28.125])


def test_bad_frame_is_refused():
    with pytest.raises(ValueError):
        Preprocessor(_spec("stretch"))(np.zeros((4, 4), np.uint8))


# ---------------------------------------------------------------- postprocessing
def test_softmax_topk_labels_and_min_score():
    logits = np.array([[1.0, 3.0, 2.0, -1.0]], np.float32)
    clf = Classifier(["a", "b", "c", "d"], "softmax", "logits", top_k=3, min_score=0.05)
    top = clf({"logits": logits})
    assert [t["label"] for t in top] == ["b", "c", "a"]
    assert abs(sum(activate(logits[0], "softmax")) - 1.0) < 1e-9
    clf = Classifier(["a", "b", "c", "d"], "softmax", "logits", top_k=3, min_score=0.5)
    assert [t["label"] for t in clf({"logits": logits})] == ["b"]


def test_non_finite_outputs_are_an_error():
    from agent.errors import BackendError
    clf = Classifier(["a", "b"], "softmax", None)
    with pytest.raises(BackendError):
        clf({"x": np.array([np.nan, 1.0])})


# ---------------------------------------------------------------- sources
def test_file_source_directory_loops_and_skips_bad_images(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((5, 5, 3), 10, np.uint8))
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg")
    cv2.imwrite(str(tmp_path / "c.png"), np.full((5, 5, 3), 30, np.uint8))
    src = make_source("file://" + str(tmp_path), loop=True)
    src.open()
    values = [int(src.read()[0, 0, 0]) for _ in range(4)]
    assert values == [10, 30, 10, 30] and src.bad_frames == 1


def test_file_source_relative_to_base_and_end_of_stream():
    src = make_source("file://cat.jpg", base_dir=SAMPLES, loop=False)
    src.open()
    assert src.read().shape[2] == 3 and src.read() is None


def test_video_file_source(tmp_path):
    path = str(tmp_path / "v.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for i in range(5):
        writer.write(np.full((24, 32, 3), i * 40, np.uint8))
    writer.release()
    src = make_source("file://" + path, loop=False)
    src.open()
    frames = []
    while True:
        f = src.read()
        if f is None:
            break
        frames.append(f)
    assert len(frames) == 5 and frames[0].shape == (24, 32, 3)


@pytest.mark.parametrize("uri, message", [
    ("file:///no/such/thing", "does not exist"),
    ("bogus://x", "unknown scheme 'bogus'"),
    ("synthetic://?fps=fast", "must be numbers"),
])
def test_source_errors(uri, message):
    with pytest.raises(SourceError) as err:
        make_source(uri).open()
    assert message in str(err.value)


def test_synthetic_source_shape_and_live():
    src = make_source("synthetic://?width=64&height=48&fps=0")
    src.open()
    assert src.read().shape == (48, 64, 3) and not src.live
    assert make_source("synthetic://").live


def test_frame_slot_live_keeps_only_the_newest():
    slot = FrameSlot(live=True)
    stop = threading.Event()
    for i in range(3):
        slot.put(Frame(np.zeros((1, 1, 3), np.uint8), i, 0.0, 0.0), stop)
    assert slot.get(0.1).seq == 2 and slot.dropped == 2
    assert slot.get(0.01) is None


def test_frame_slot_file_mode_hands_over_every_frame():
    slot = FrameSlot(live=False)
    stop = threading.Event()
    got = []

    def consumer():
        while len(got) < 50:
            frame = slot.get(1.0)
            if frame is not None:
                got.append(frame.seq)

    t = threading.Thread(target=consumer)
    t.start()
    for i in range(50):
        assert slot.put(Frame(np.zeros((1, 1, 3), np.uint8), i, 0.0, 0.0), stop)
    t.join(10)
    assert got == list(range(50)) and slot.dropped == 0


def test_backend_spin_is_off_unless_asked():
    requires("onnxruntime")
    from agent.updates.loader import backend_options
    from agent.backends.onnxruntime import OnnxRuntimeBackend
    assert backend_options(load_config(None)).spin is False
    assert backend_options(load_config(None, ["backend.spin=true"])).spin is True
    for spin in (False, True):
        backend = OnnxRuntimeBackend(ModelPackage.load(MODEL_DIR),
                                     backend_options(load_config(None, [
                                         "backend.spin={}".format(str(spin).lower())]))).load()
        try:
            out = backend.infer(np.zeros((1, 3, 224, 224), np.float32))
            assert out["logits"].shape == (1, 1000)
        finally:
            backend.close()


def test_labels_that_are_not_utf8_are_a_model_error(tmp_path):
    from agent.store.package import load_labels
    path = tmp_path / "labels.txt"
    path.write_bytes(b"\xef\xbb\xbfcat\r\ndog\n\xff\xfe\n")
    with pytest.raises(ModelError) as err:
        load_labels(str(path))
    assert "labels.txt: not UTF-8 text (byte 0xff on line 3); save it as UTF-8" in str(err.value)
    path.write_bytes(b"\xef\xbb\xbfcat\r\ndog\rcaf\xc3\xa9\n\n")
    assert load_labels(str(path)) == ["cat", "dog", "caf\u00e9"]


def test_health_owns_the_status_degraded_wins_and_building_shows():
    """agent/health.py: problems make `serving` read `degraded` (with the reasons, redacted),
    a background build reads `building`, and each change is published once."""
    from agent.health import Health

    class Link(object):
        def __init__(self):
            self.sent = []

        def publish(self, suffix, payload, kind, retain=False, qos=None):
            self.sent.append((suffix, payload))

    class Model(object):
        ref = "m@1"

        def describe(self):
            return {"name": "m", "version": "1", "backend": "onnxruntime", "precision": "fp32"}

    link = Link()
    health = Health("dev", "boot1", "file://x", model=lambda: Model())
    health.problem("source", "not yet published")  # nothing attached: recorded only
    assert link.sent == [] and health.problems == {"source": "not yet published"}
    health.attach(link)
    health.problem("source", None)
    health.set_state("serving")
    assert health.state == "serving"
    health.problem("source", "rtsp://user:secret@cam/1 unreachable")
    assert health.state == "degraded"
    status = [p for s, p in link.sent if s == "status"][-1]
    assert status["state"] == "degraded" and "secret" not in status["detail"]
    event = [p for s, p in link.sent if s == "events"][-1]
    assert (event["command"], event["detail"], event["state"]) == ("health", "source",
                                                                    "degraded")
    sent = len(link.sent)
    health.problem("source", "rtsp://user:secret@cam/1 unreachable")  # the same: no news
    assert len(link.sent) == sent
    health.problem("source", None)
    health.set_building("m@2")
    assert health.state == "building" and health.status_payload()["building"] == "m@2"
    health.set_building(None)
    assert health.state == "serving"
    health.problem("model", "no model loads", announce=False)
    assert health.problems == {"model": "no model loads"} and health.state == "serving"
    offline = health.offline_payload()
    assert offline["state"] == "offline" and offline["reason"] == "shutdown"
    assert health.status_line().startswith("offline m@1 on onnxruntime fp32")
