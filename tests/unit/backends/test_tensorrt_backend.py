"""TensorRT backend through the TensorRT and pycuda test doubles (tests/support/doubles/).

What is real here: the ONNX files, ONNX Runtime (the double executes engines with it), OpenCV
preprocessing of real photos, files on disk. What is a double: TensorRT and pycuda, following
docs/PLATFORM.md sections 2 and 3. The CUDA kernel itself is checked on a GPU by
tools/gpu/check_cuda_backend.py; here its launch geometry is checked through a numpy
transcription (tests/support/gpu_kernel_emulator.py).
"""

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from support.trt_helpers import (MODEL_DIR, NANO, ORIN, ROOT, TX2, XAVIER, copy_samples, doubles,
                                 pycuda_double, register_kernel_emulator, sample_frames,
                                 switch_generation, tiny_package, trt_double)

from agent.backends import open_backend
from agent.backends.base import BackendOptions
from agent.backends.validation import ValidationPolicy
from agent.errors import BackendError
from agent.store.package import ModelPackage
from agent.preprocess import Preprocessor


def options(tmp_path, **kw):
    kw.setdefault("state_dir", str(tmp_path / "var"))
    kw.setdefault("kind", "tensorrt")
    kw.setdefault("preprocess", "cpu")
    return BackendOptions(**kw)


def load(package, opts, **kw):
    from agent.backends.tensorrt import TensorRTBackend
    return TensorRTBackend(package, opts, **kw).load()


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def effnet():
    return ModelPackage.load(MODEL_DIR)


@pytest.fixture
def tiny(tmp_path):
    return tiny_package(str(tmp_path / "pkg"))


# ---------------------------------------------------------------------------------------------
# Both API generations: build, cache, load, infer on the bundled model
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("generation,api", [("8.2", "binding"), ("8.5", "tensor"),
                                            ("10.3", "tensor")])
def test_generation_builds_caches_loads_and_infers_bundled_model(tmp_path, effnet, generation,
                                                                 api):
    from agent.backends.onnxruntime import OnnxRuntimeBackend
    with doubles(generation, NANO) as trt:
        opts = options(tmp_path, precision="fp16")
        backend = load(effnet, opts)
        try:
            assert backend.io_api == api
            assert backend.precision == "fp16"
            info = backend.describe()
            assert info["tensorrt"] == trt.__version__
            assert os.path.isfile(info["engine_path"])
            assert info["engine_path"] == os.path.join(
                str(tmp_path / "var"), "engines", "efficientnet_lite0-1",
                info["engine_key"] + ".engine")
            record = json.load(open(info["engine_path"][:-len(".engine")] + ".json"))
            assert record["fingerprint"]["gpu"] == "NVIDIA Tegra X1"
            assert record["fingerprint"]["compute_capability"] == "5.3"
            assert record["built_precision"] == "fp16"
            assert record["validation"]["passed"] is True
            reference = OnnxRuntimeBackend(effnet, opts).load()
            pre = Preprocessor(effnet.input)
            for frame in sample_frames():
                tensor = pre(frame)
                got = backend.infer(tensor)["logits"]
                want = reference.infer(tensor)["logits"]
                assert got.shape == want.shape == (1, 1000)
                assert got.argmax() == want.argmax()
                assert np.max(np.abs(softmax(got) - softmax(want))) < 0.01
            reference.close()
        finally:
            backend.close()
        builds = trt.KNOBS.builds
        again = load(effnet, opts)
        try:
            assert again.from_cache and again.engine_key == info["engine_key"]
            assert again.precision == "fp16"
            assert trt.KNOBS.builds == builds, "a cached engine must not be rebuilt"
        finally:
            again.close()


def test_tensorrt_11_strong_typing_falls_back_to_fp32_with_message(tmp_path, tiny):
    with doubles("11", ORIN):
        backend = load(tiny, options(tmp_path, precision="fp16"))
        try:
            assert backend.precision == "fp32"
            assert any("strongly typed" in n and "fp16 was asked" in n for n in backend.notes)
            assert backend.io_api == "tensor"
        finally:
            backend.close()


# ---------------------------------------------------------------------------------------------
# Engine cache: fingerprint, stale engines, atomic writes
# ---------------------------------------------------------------------------------------------
def test_cache_key_changes_when_any_fingerprint_field_changes():
    from agent.backends.tensorrt.engine_cache import (FINGERPRINT_FIELDS, fingerprint_key,
                                                     make_fingerprint)
    base = dict(onnx_sha256="a" * 64, tensorrt="8.2.1.8", gpu="NVIDIA Tegra X1",
                compute_capability="5.3", board="NVIDIA Jetson Nano Developer Kit",
                precision="fp16", input_shapes={"input": [1, 3, 224, 224]}, max_batch=1,
                workspace_mb=256, dla_core=None, builder_flags=["fp16"], calibration=None)
    changed = dict(onnx_sha256="b" * 64, tensorrt="8.2.3.0", gpu="NVIDIA Tegra X2",
                   compute_capability="6.2", board="quill", precision="fp32",
                   input_shapes={"input": [1, 3, 256, 256]}, max_batch=4, workspace_mb=512,
                   dla_core=0, builder_flags=["fp16", "int8_entropy2"], calibration="c0ffee")
    key = fingerprint_key(make_fingerprint(**base))
    assert key == fingerprint_key(make_fingerprint(**base))
    assert set(changed) == set(FINGERPRINT_FIELDS)
    for field, value in changed.items():
        other = dict(base)
        other[field] = value
        assert fingerprint_key(make_fingerprint(**other)) != key, field


def test_board_and_gpu_are_part_of_the_key(tmp_path, tiny):
    root = tmp_path / "root"
    (root / "proc" / "device-tree").mkdir(parents=True)
    (root / "proc" / "device-tree" / "model").write_bytes(b"NVIDIA Jetson Nano Developer Kit\x00")
    with doubles("8.2", NANO) as trt:
        a = load(tiny, options(tmp_path), board_root=str(root))
        a.close()
        (root / "proc" / "device-tree" / "model").write_bytes(b"NVIDIA Jetson Nano 2GB\x00")
        b = load(tiny, options(tmp_path), board_root=str(root))
        b.close()
        assert a.engine_key != b.engine_key
        assert any("board: engine built for 'NVIDIA Jetson Nano Developer Kit', now "
                   "'NVIDIA Jetson Nano 2GB'" in n for n in b.notes), b.notes
        assert trt.KNOBS.builds == 2


def test_engine_from_another_tensorrt_is_refused_with_reason_and_rebuilt(tmp_path, tiny):
    with doubles("8.2", XAVIER) as trt:
        old = load(tiny, options(tmp_path, precision="fp16"))
        old.close()
        progress = []
        switch_generation("10.3")  # JetPack upgrade: same device, new TensorRT
        new = load(tiny, options(tmp_path, precision="fp16"),
                   progress=lambda *a: progress.append(a))
        try:
            assert not new.from_cache and new.engine_key != old.engine_key
            reason = [n for n in new.notes if "was built for a different setup" in n]
            assert reason and "tensorrt: engine built for '8.2.1.8', now '10.3.0.26'" in reason[0]
            assert any(p[0] == "cache" and "different setup" in p[2] for p in progress)
            assert trt_double.KNOBS.builds == 2
        finally:
            new.close()


def test_corrupt_or_tampered_engine_is_refused_with_reason_and_rebuilt(tmp_path, tiny):
    with doubles("10.3", NANO):
        first = load(tiny, options(tmp_path))
        first.close()
        engine, record = first.engine_path, first.engine_path[:-7] + ".json"
        # 1. truncated engine (a crash while copying it in, a bad SD card sector)
        with open(engine, "r+b") as handle:
            handle.truncate(100)
        second = load(tiny, options(tmp_path))
        second.close()
        assert any("stale or corrupt" in n for n in second.notes), second.notes
        assert trt_double.KNOBS.builds == 2
        assert os.path.getsize(engine) > 100, "the engine must have been rebuilt"
        # 2. a record whose fingerprint does not match this device
        meta = json.load(open(record))
        meta["fingerprint"]["gpu"] = "NVIDIA Tegra X2"
        json.dump(meta, open(record, "w"))
        third = load(tiny, options(tmp_path))
        third.close()
        assert any("does not match this device" in n and "gpu: engine built for "
                   "'NVIDIA Tegra X2', now 'NVIDIA Tegra X1'" in n for n in third.notes)
        assert trt_double.KNOBS.builds == 3
        # 3. an engine TensorRT itself refuses (consistent record, plan from another version)
        data = open(engine, "rb").read().replace(b"10.3.0.26", b"10.3.0.99")
        meta = json.load(open(record))
        import hashlib
        meta["engine_sha256"] = hashlib.sha256(data).hexdigest()
        meta["engine_bytes"] = len(data)
        open(engine, "wb").write(data)
        json.dump(meta, open(record, "w"))
        fourth = load(tiny, options(tmp_path))
        fourth.close()
        assert any("could not be deserialized" in n and "not compatible with this version" in n
                   for n in fourth.notes), fourth.notes
        assert trt_double.KNOBS.builds == 4


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    from agent.backends.tensorrt import engine_cache
    target = tmp_path / "engines" / "x.engine"
    engine_cache.atomic_write(str(target), b"old engine")
    real_fsync = os.fsync

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine_cache.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        engine_cache.atomic_write(str(target), b"new engine" * 1000)
    monkeypatch.setattr(engine_cache.os, "fsync", real_fsync)
    assert target.read_bytes() == b"old engine"
    assert sorted(os.listdir(str(target.parent))) == ["x.engine"], "temp file left behind"


def test_engine_without_record_is_not_used(tmp_path, tiny, monkeypatch):
    """The JSON record is written last: an engine whose record write failed is rebuilt."""
    # Import the modules that bind engine_cache.atomic_write by name BEFORE patching: a first
    # import under the patch would keep the failing writer after this test.
    from agent.backends.tensorrt import build, calibrator, engine_cache
    writer = engine_cache.atomic_write
    with doubles("10.3", NANO):
        real = engine_cache.atomic_write
        calls = []

        def fail_on_record(path, data):
            calls.append(path)
            if path.endswith(".json"):
                raise OSError(28, "No space left on device")
            real(path, data)

        monkeypatch.setattr(engine_cache, "atomic_write", fail_on_record)
        with pytest.raises(OSError):
            load(tiny, options(tmp_path))
        assert pycuda_double.stats().pushes == pycuda_double.stats().pops == 1
        monkeypatch.setattr(engine_cache, "atomic_write", real)
        backend = load(tiny, options(tmp_path))
        backend.close()
        assert not backend.from_cache
        assert any("no engine built yet" in n for n in backend.notes)
    assert build.atomic_write is calibrator.atomic_write is writer is engine_cache.atomic_write


# ---------------------------------------------------------------------------------------------
# Precision, INT8 calibration, DLA, workspace, timing cache
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", [NANO, TX2], ids=["nano-sm53", "tx2-sm62"])
def test_int8_refused_without_fast_int8_falls_back_with_message(tmp_path, tiny, device):
    calib = copy_samples(str(tmp_path / "calib"))
    with doubles("8.2", device):
        backend = load(tiny, options(tmp_path, precision="int8", calibration_dir=calib))
        try:
            assert backend.precision == "fp16"
            sm = "SM {}.{}".format(*device["cc"])
            assert any("INT8 is not available" in n and sm in n and "FP16 instead" in n
                       for n in backend.notes), backend.notes
            assert trt_double.KNOBS.calibration_batches == 0
        finally:
            backend.close()


def test_int8_calibrator_feeds_batches_and_writes_then_reads_cache(tmp_path, tiny):
    calib = copy_samples(str(tmp_path / "calib"))
    with doubles("10.3", XAVIER):
        opts = options(tmp_path, precision="int8", calibration_dir=calib)
        backend = load(tiny, opts)
        backend.close()
        assert backend.precision == "int8"
        assert trt_double.KNOBS.calibration_batches == 3  # three photos, batch 1
        cache = os.path.join(str(tmp_path / "var"), "engines", "tiny-1",
                             "calibration-10.3.0.26.cache")
        text = open(cache).read()
        assert text.startswith("TRT-DOUBLE-EntropyCalibration2") and "input:" in text
        # The cache is per model version: a rebuild (engine gone) reads it instead of feeding.
        os.unlink(backend.engine_path)
        again = load(tiny, opts)
        again.close()
        assert again.precision == "int8" and not again.from_cache
        assert trt_double.KNOBS.calibration_batches == 3


def test_int8_calibrator_batches_come_from_the_models_preprocessor(tmp_path, tiny):
    from agent.backends.tensorrt.cuda import CudaContext
    from agent.backends.tensorrt.calibrator import calibration_images, create_int8_calibrator
    calib = copy_samples(str(tmp_path / "calib"))
    with doubles("10.3", XAVIER) as trt:
        with CudaContext(0) as cuda:
            files = calibration_images(calib)
            cache = str(tmp_path / "cal.cache")
            cal = create_int8_calibrator(trt, cuda, tiny.input, files, 1, cache)
            assert isinstance(cal, trt.IInt8EntropyCalibrator2)
            assert cal.get_batch_size() == 1
            assert cal.read_calibration_cache() is None
            import cv2
            pre = Preprocessor(tiny.input)
            for path in files:
                pointers = cal.get_batch(["input"])
                assert len(pointers) == 1
                raw = pycuda_double.device_read(pointers[0], 3 * 32 * 32 * 4)
                got = np.frombuffer(raw, dtype=np.float32).reshape(1, 3, 32, 32)
                np.testing.assert_array_equal(got, pre(cv2.imread(path)))
            assert cal.get_batch(["input"]) is None
            cal.write_calibration_cache(b"calibration table")
            assert cal.read_calibration_cache() == b"calibration table"
        assert pycuda_double.stats().frees_without_context == 0


def test_int8_without_calibration_images_is_a_clear_error(tmp_path, tiny):
    with doubles("10.3", XAVIER):
        with pytest.raises(BackendError, match="calibration folder .* does not exist"):
            load(tiny, options(tmp_path, precision="int8", calibration_dir=None))


def test_dla_core_used_only_where_it_exists(tmp_path, tiny):
    with doubles("10.3", XAVIER) as trt:
        backend = load(tiny, options(tmp_path, dla_core=1))
        backend.close()
        config = trt.KNOBS.last_config
        assert config.default_device_type == trt.DeviceType.DLA and config.DLA_core == 1
        assert config.get_flag(trt.BuilderFlag.GPU_FALLBACK)
    with doubles("10.3", NANO) as trt:
        backend = load(tiny, options(tmp_path / "nano", dla_core=0))
        backend.close()
        assert trt.KNOBS.last_config.default_device_type == trt.DeviceType.GPU
        assert any("DLA core 0 asked but this device has 0" in n for n in backend.notes)


@pytest.mark.parametrize("generation", ["8.2", "10.3"])
def test_workspace_set_through_the_generations_api(tmp_path, tiny, generation):
    with doubles(generation, NANO) as trt:
        backend = load(tiny, options(tmp_path, workspace_mb=64))
        backend.close()
        config = trt.KNOBS.last_config
        if generation == "8.2":
            assert not hasattr(config, "set_memory_pool_limit")
            assert config.max_workspace_size == 64 << 20
        else:
            assert not hasattr(config, "max_workspace_size")
            assert config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE) == 64 << 20
        trt.KNOBS.min_workspace = 128 << 20
        with pytest.raises(BackendError, match="could not build .*workspace 32 MiB.*"
                                               "Insufficient workspace"):
            load(tiny, options(tmp_path, workspace_mb=32))


def test_timing_cache_is_kept_per_tensorrt_and_gpu(tmp_path, tiny):
    with doubles("10.3", NANO):
        backend = load(tiny, options(tmp_path))
        backend.close()
        timing = os.path.join(str(tmp_path / "var"), "engines",
                              "timing-10.3.0.26-NVIDIA_Tegra_X1.cache")
        assert os.path.isfile(timing)
        os.unlink(backend.engine_path[:-7] + ".json")
        again = load(tiny, options(tmp_path))
        again.close()
        assert trt_double.KNOBS.timing_cache_hits == 1


def test_dynamic_batch_gets_a_profile_up_to_max_batch(tmp_path):
    package = tiny_package(str(tmp_path / "dyn"), dynamic_batch=True)
    with doubles("10.3", NANO):
        backend = load(package, options(tmp_path, max_batch=4))
        try:
            batch = np.random.RandomState(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
            out = backend.infer(batch)["logits"]
            assert out.shape == (3, 10)
            single = backend.infer(batch[:1])["logits"]
            np.testing.assert_allclose(single[0], out[0], rtol=1e-2, atol=1e-2)
            with pytest.raises(BackendError, match="outside the engine's range 1..4"):
                backend.infer(np.zeros((5, 3, 32, 32), np.float32))
        finally:
            backend.close()
        plan = open(backend.engine_path, "rb").read()
        assert b'"input": [[1, 3, 32, 32], [4, 3, 32, 32], [4, 3, 32, 32]]' in plan


# ---------------------------------------------------------------------------------------------
# Parser errors, preflight, build failures
# ---------------------------------------------------------------------------------------------
def test_parser_errors_are_reported_per_node(tmp_path, monkeypatch):
    from agent.backends.tensorrt import build
    from agent.backends.tensorrt.preflight import PreflightReport
    package = tiny_package(str(tmp_path / "hs"), extra="HardSwish", opset=14)
    with doubles("8.2", NANO) as trt:
        # Without the preflight (e.g. no onnx package), the parser itself reports the node.
        monkeypatch.setattr(build, "preflight", lambda *a, **k: PreflightReport())
        with pytest.raises(BackendError) as err:
            build.build_engine(package.onnx_path, trt=trt)
        text = str(err.value)
        assert "could not parse" in text
        assert "Unsupported ONNX opset 14" in text
        assert "node 2: No importer registered for op: HardSwish" in text


def test_preflight_names_what_tensorrt_82_rejects_before_building(tmp_path):
    from agent.backends.tensorrt.preflight import preflight
    from onnx import TensorProto
    cases = {
        "opset": (dict(opset=14), "opset 14 is newer than TensorRT 8.2.1.8 supports"),
        "hardswish": (dict(extra="HardSwish", opset=14), "operator HardSwish is not supported"),
        "pad": (dict(extra="Pad"), "takes its pads from a computed tensor"),
        "argmax": (dict(extra="ArgMax"), "ArgMax fails on the Jetson Nano (SM 5.3)"),
        "uint8": (dict(input_type=TensorProto.UINT8), "is uint8, which TensorRT 8.2.1.8 does not"),
        "dynamic_hw": (dict(dynamic_hw=True), "dynamic dimensions [1, 3, 'H', 'W'] beyond the"),
    }
    from support.trt_helpers import tiny_onnx
    for name, (kw, message) in cases.items():
        path = tiny_onnx(str(tmp_path / (name + ".onnx")), **kw)
        report = preflight(path, "8.2.1.8", "5.3")
        assert any(message in p for p in report.problems), (name, report.problems)
        newer = preflight(path, "10.3.0.26", "8.7")
        if name in ("opset", "hardswish", "pad", "argmax"):
            assert not newer.problems, (name, newer.problems)
    ok = preflight(tiny_onnx(str(tmp_path / "ok.onnx")), "8.2.1.8", "5.3")
    assert ok.checked and not ok.problems and ok.opset == 13


def test_nonmaxsuppression_is_not_refused_on_82_and_the_plugins_are_initialised(tmp_path):
    """TensorRT 8.0+ imports ONNX NonMaxSuppression (experimental, as a plugin): the preflight
    lets it through on 8.2, and the build registers the plugins before parsing."""
    from agent.backends.tensorrt.build import build_engine
    from agent.backends.tensorrt.preflight import preflight
    from support.trt_helpers import tiny_onnx
    path = tiny_onnx(str(tmp_path / "nms.onnx"), extra="NonMaxSuppression")
    report = preflight(path, "8.2.1.8", "5.3")
    assert not report.problems, report.problems
    assert any("NonMaxSuppression is experimental" in n for n in report.notes)
    assert preflight(path, "7.1.3", "5.3").problems  # TensorRT 7 has no importer for it
    with doubles("8.2", NANO) as trt:
        result = build_engine(path, precision="fp32", trt=trt)
        assert result.data and trt._plugins_initialized


def test_82_double_parses_nms_only_after_the_plugin_library_is_initialised(tmp_path):
    from support.trt_helpers import tiny_onnx
    path = tiny_onnx(str(tmp_path / "nms.onnx"), extra="NonMaxSuppression")
    with doubles("8.2", NANO) as trt:
        logger = trt.Logger()
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        parser = trt.OnnxParser(trt.Builder(logger).create_network(flags), logger)
        assert not parser.parse(open(path, "rb").read())
        assert "Plugin not found" in parser.get_error(0).desc()
        assert trt.init_libnvinfer_plugins(logger, "")
        parser = trt.OnnxParser(trt.Builder(logger).create_network(flags), logger)
        assert parser.parse(open(path, "rb").read())
    with doubles("10.3", NANO) as trt:  # 8.5+: INMSLayer, no plugin needed
        logger = trt.Logger()
        parser = trt.OnnxParser(trt.Builder(logger).create_network(0), logger)
        assert parser.parse(open(path, "rb").read())


def test_preflight_failure_stops_the_build_with_the_reason(tmp_path):
    package = tiny_package(str(tmp_path / "hs"), extra="HardSwish", opset=14)
    with doubles("8.2", NANO):
        with pytest.raises(BackendError, match="cannot be built with TensorRT 8.2.1.8: opset 14"):
            load(package, options(tmp_path))
        assert trt_double.KNOBS.builds == 0


def test_preflight_skipped_politely_without_onnx(tmp_path, monkeypatch, tiny):
    from agent.backends.tensorrt.preflight import preflight
    monkeypatch.setitem(sys.modules, "onnx", None)
    report = preflight(tiny.onnx_path, "8.2.1.8")
    assert not report.checked and not report.problems
    assert "onnx package not installed" in report.notes[0]


def test_build_returning_none_is_a_clear_error(tmp_path, tiny):
    with doubles("10.3", NANO) as trt:
        trt.KNOBS.fail_build = True
        with pytest.raises(BackendError) as err:
            load(tiny, options(tmp_path))
        assert "could not build a fp16 engine for model.onnx" in str(err.value)
        assert "injected build failure" in str(err.value)


def test_82_build_errors_reach_the_agent_after_an_earlier_build(tmp_path, tiny):
    """TensorRT < 8.4 keeps only the first logger of the process (NVIDIA/TensorRT#1475): a
    second build's errors must still be reported, so the agent uses one logger."""
    with doubles("8.2", NANO) as trt:
        first = load(tiny, options(tmp_path / "a"))
        first.close()
        trt.KNOBS.fail_build = True
        with pytest.raises(BackendError) as err:
            load(tiny, options(tmp_path / "b"))
        assert "injected build failure" in str(err.value), str(err.value)
        # ...and errors from the first build are not repeated in a later one's message.
        trt.KNOBS.fail_build = False
        trt.KNOBS.min_workspace = 1 << 40
        with pytest.raises(BackendError) as err:
            load(tiny, options(tmp_path / "c"))
        assert "Insufficient workspace" in str(err.value)
        assert "injected build failure" not in str(err.value)


def test_82_double_keeps_only_the_first_logger_like_tensorrt_before_84():
    for generation, first_gets_it in (("8.2", True), ("10.3", False)):
        with doubles(generation, NANO) as trt:
            seen = {"first": [], "second": []}

            def logger(key):
                class L(trt.ILogger):
                    def __init__(self):
                        trt.ILogger.__init__(self)

                    def log(self, severity, msg):
                        seen[key].append(msg)
                return L()

            trt.Builder(logger("first"))
            trt.KNOBS.fail_build = True
            second = logger("second")
            builder = trt.Builder(second)
            network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag
                                                      .EXPLICIT_BATCH))
            network._onnx = b"x"
            assert builder.build_serialized_network(network,
                                                    builder.create_builder_config()) is None
            got = "first" if first_gets_it else "second"
            assert seen[got] and not seen["first" if got == "second" else "second"], seen


# ---------------------------------------------------------------------------------------------
# Degradation chain and validation gate
# ---------------------------------------------------------------------------------------------
def test_chain_steps_fp16_to_fp32_to_onnxruntime_with_reasons(tmp_path, tiny):
    with doubles("10.3", NANO) as trt:
        trt.KNOBS.fail_build = True
        backend, reasons = open_backend(tiny, options(tmp_path, kind="auto", precision="fp16"))
        try:
            assert backend.name == "onnxruntime"
            assert len(reasons) == 2
            assert reasons[0].startswith("tensorrt fp16 failed: TensorRT 10.3.0.26 could not "
                                         "build a fp16 engine")
            assert reasons[1].startswith("tensorrt fp32 failed: TensorRT 10.3.0.26 could not "
                                         "build a fp32 engine")
        finally:
            backend.close()
        assert pycuda_double.stats().pushes == pycuda_double.stats().pops == 2


def test_chain_drops_to_fp32_when_the_fp16_engine_fails_validation(tmp_path, tiny):
    with doubles("10.3", NANO) as trt:
        trt.KNOBS.corrupt_outputs = {"fp16"}
        backend, reasons = open_backend(tiny, options(tmp_path, kind="tensorrt",
                                                      precision="fp16"))
        try:
            assert backend.name == "tensorrt" and backend.precision == "fp32"
            assert len(reasons) == 1 and "refused by the validation gate" in reasons[0]
            assert "top-1 agrees with onnxruntime on" in reasons[0]
        finally:
            backend.close()


def test_validation_gate_refuses_disagreeing_engine_and_remembers_it(tmp_path, effnet):
    with doubles("8.2", NANO) as trt:
        trt.KNOBS.corrupt_outputs = {"fp16"}
        with pytest.raises(BackendError) as err:
            load(effnet, options(tmp_path, precision="fp16"))
        assert "refused by the validation gate" in str(err.value)
        assert "top-1 agrees with onnxruntime on 0/16 frames" in str(err.value)
        builds = trt.KNOBS.builds
        with pytest.raises(BackendError, match="failed validation when it was built"):
            load(effnet, options(tmp_path, precision="fp16"))
        assert trt.KNOBS.builds == builds, "a refused engine is not rebuilt on every load"
        assert pycuda_double.stats().pushes == pycuda_double.stats().pops == 2


def test_validate_against_reference_unit():
    from agent.backends.validation import validate_against_reference

    class Fake(object):
        def __init__(self, name, fn):
            self.name = name
            self.fn = fn

        def infer(self, tensor):
            return {"logits": self.fn(tensor)}

    rng = np.random.RandomState(0)
    tensors = [rng.standard_normal((1, 4)).astype(np.float32) * 5 for _ in range(10)]
    same = validate_against_reference(Fake("a", lambda t: t), Fake("b", lambda t: t), tensors,
                                      0.98)
    assert same.passed and same.ok and same.top1_agreement == 1.0 and same.max_abs_diff == 0.0
    flipped = validate_against_reference(Fake("a", lambda t: -t), Fake("b", lambda t: t),
                                         tensors, 0.98)
    assert not flipped.passed and "top-1 agrees with b on 0/10 frames" in flipped.reason
    noisy = validate_against_reference(Fake("a", lambda t: t + 0.01), Fake("b", lambda t: t),
                                       tensors, 0.5, max_abs_diff=1e-9)
    assert not noisy.passed and "more than the allowed" in noisy.reason
    nan = validate_against_reference(Fake("a", lambda t: t * np.nan), Fake("b", lambda t: t),
                                     tensors, 0.5)
    assert not nan.passed and "NaN" in nan.reason
    # Scores shaped (frames, classes, 1, 1): the activation runs over each frame's classes, as
    # the classifier does, not over the last axis (which would make every score 1.0).
    nchw = [t.reshape(1, 4, 1, 1) for t in tensors]
    flipped = validate_against_reference(Fake("a", lambda t: -t), Fake("b", lambda t: t), nchw,
                                         0.98)
    assert not flipped.passed and "top-1 agrees with b on 0/10 frames" in flipped.reason


# ---------------------------------------------------------------------------------------------
# CUDA context discipline (pycuda double counts)
# ---------------------------------------------------------------------------------------------
def test_context_pushed_and_popped_exactly_once_and_freed_while_current(tmp_path, tiny):
    with doubles("10.3", NANO):
        backend = load(tiny, options(tmp_path))
        stats = pycuda_double.stats()
        assert stats.pushes == 1 and stats.pops == 0
        assert stats.push_threads == [threading.get_ident()]
        backend.infer(np.zeros((1, 3, 32, 32), np.float32))
        errors = []

        def other_thread():
            try:
                backend.infer(np.zeros((1, 3, 32, 32), np.float32))
            except BackendError as exc:
                errors.append(str(exc))

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert errors and "use the backend only from the thread that loaded it" in errors[0]
        backend.close()
        backend.close()
        assert stats.pushes == 1 and stats.pops == 1 and stats.detaches == 1
        assert stats.allocs == stats.frees > 0 and stats.host_allocs == stats.host_frees > 0
        assert stats.frees_without_context == 0
        assert pycuda_double.live_device_buffers() == 0
        assert pycuda_double.Context.get_current() is None
        assert "pycuda.autoinit" not in sys.modules


def test_load_in_a_worker_thread_owns_the_context_there(tmp_path, tiny):
    with doubles("8.2", NANO):
        results = {}

        def worker():
            backend = load(tiny, options(tmp_path))
            results["out"] = backend.infer(np.ones((1, 3, 32, 32), np.float32))["logits"]
            results["current"] = pycuda_double.Context.get_current() is not None
            backend.close()
            results["after"] = pycuda_double.Context.get_current()

        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert results["out"].shape == (1, 10) and results["current"]
        assert results["after"] is None
        assert pycuda_double.Context.get_current() is None  # never current in this thread
        stats = pycuda_double.stats()
        assert stats.pushes == stats.pops == 1 and stats.frees_without_context == 0


def test_backend_handed_from_loading_thread_to_inference_thread_to_closer(tmp_path, tiny):
    """Model manager loads and validates, the inference thread serves, another thread closes."""
    with doubles("10.3", NANO):
        box = {}
        current = {}

        def run(name, fn):
            def body():
                fn()
                current[name] = pycuda_double.Context.get_current()
            t = threading.Thread(target=body, name=name)
            t.start()
            t.join()

        def manager():
            box["backend"] = load(tiny, options(tmp_path))
            box["backend"].release_thread()

        def inference():
            box["out"] = box["backend"].infer(np.ones((1, 3, 32, 32), np.float32))["logits"]
            box["backend"].release_thread()

        run("manager", manager)
        run("inference", inference)
        run("closer", box["backend"].close)
        assert box["out"].shape == (1, 10)
        assert current == {"manager": None, "inference": None, "closer": None}
        stats = pycuda_double.stats()
        assert stats.pushes == stats.pops == 3 and stats.detaches == 1
        assert stats.frees_without_context == 0 and pycuda_double.live_device_buffers() == 0


def test_engine_execution_without_a_current_context_fails(tmp_path, tiny):
    """The doubles enforce CUDA's per-thread context rule, so the tests above can fail."""
    with doubles("10.3", NANO):
        backend = load(tiny, options(tmp_path))
        try:
            ctx = pycuda_double.Context.get_current()
            pycuda_double.Context.pop()
            try:
                with pytest.raises(BackendError, match="execute_async_v3 failed"):
                    backend._buffers.io.execute(0)
            finally:
                ctx.push()
        finally:
            backend.close()


# ---------------------------------------------------------------------------------------------
# IO adapters: wrong names, missing dynamic shapes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("generation,adapter", [("8.2", "BindingApiIO"), ("10.3", "TensorApiIO")])
def test_io_adapter_errors(tmp_path, generation, adapter):
    from agent.backends.tensorrt.cuda import CudaContext
    from agent.backends.tensorrt.io import io_adapter
    from agent.backends.tensorrt.build import build_engine
    package = tiny_package(str(tmp_path / "dyn"), dynamic_batch=True)
    with doubles(generation, NANO) as trt:
        with CudaContext(0) as cuda:
            result = build_engine(package.onnx_path, precision="fp32", max_batch=2, trt=trt)
            engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(result.data)
            io = io_adapter(trt, engine, engine.create_execution_context())
            assert type(io).__name__ == adapter
            names = [(t.name, t.is_input, t.shape) for t in io.tensors()]
            assert names == [("input", True, (-1, 3, 32, 32)), ("logits", False, (-1, 10))]
            with pytest.raises(BackendError, match="no tensor 'nope' .*its tensors: input, logits"):
                io.bind({"nope": 1234})
            with pytest.raises(BackendError, match="no tensor 'nope'"):
                io.set_input_shape("nope", (1, 3, 32, 32))
            with pytest.raises(BackendError, match="'logits' is an output"):
                io.set_input_shape("logits", (1, 10))
            buffers = {n: cuda.device_alloc(1 << 15) for n in ("input", "logits")}
            io.bind({n: int(b) for n, b in buffers.items()})
            with pytest.raises(BackendError, match="dynamic shape .* must be set before"):
                io.execute(0)
            with pytest.raises(BackendError, match="refused shape \\(3, 3, 32, 32\\)"):
                io.set_input_shape("input", (3, 3, 32, 32))
            io.set_input_shape("input", (2, 3, 32, 32))
            assert io.context_shape("logits") == (2, 10)
            io.execute(0)
            del io, engine


# ---------------------------------------------------------------------------------------------
# GPU preprocessing: geometry (numpy transcription of the kernel) and the backend path
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,size", [("shorter_side_crop", 256), ("shorter_side_crop", 300),
                                       ("stretch", None), ("letterbox", None)])
@pytest.mark.parametrize("frame_hw", [(720, 1280), (480, 640), (517, 333), (224, 224)])
def test_kernel_geometry_matches_cpu_preprocessor(mode, size, frame_hw):
    from support.gpu_kernel_emulator import run_kernel
    from agent.backends.tensorrt.gpu_preprocess import kernel_args
    from agent.store.package import InputSpec
    spec = InputSpec("input", [1, 3, 224, 224], "NCHW", "RGB", mode, size, [123.675, 116.28, 103.53],
                     [58.395, 57.12, 57.375])
    rng = np.random.RandomState(1)
    frame = rng.randint(0, 256, size=frame_hw + (3,)).astype(np.uint8)
    got = run_kernel(kernel_args(spec, *frame_hw), frame)
    want = Preprocessor(spec)(frame).ravel()
    # OpenCV's fixed-point bilinear rounds differently by at most one uint8 level.
    assert np.max(np.abs(got - want)) <= 1.0 / min(spec.std) + 1e-5
    assert np.mean(np.abs(got - want) > 1e-6) < 0.2


def test_kernel_geometry_wrong_clamp_would_be_caught():
    """Negative control: clamping the integer crop to the frame instead shows up."""
    from support.gpu_kernel_emulator import run_kernel
    from agent.backends.tensorrt.gpu_preprocess import kernel_args
    spec = ModelPackage.load(MODEL_DIR).input
    frame = sample_frames()[0]
    args = kernel_args(spec, *frame.shape[:2])
    args.origin_x += 3.0  # a shifted crop (float sampling and integer crops)
    args.warp_m2 += 3.0  # the same shift for OpenCV 4.x's fixed-point warpAffine
    want = Preprocessor(spec)(frame).ravel()
    assert np.max(np.abs(run_kernel(args, frame) - want)) > 5.0 / 128


def nvcc_only_at(monkeypatch, folder):
    """Make `folder`/nvcc (a stand-in script, or none) the only nvcc find_nvcc can see, with
    a service-like PATH (no CUDA folder on it)."""
    from agent.backends.tensorrt import gpu_preprocess
    if folder is not None:
        os.makedirs(folder)
        path = os.path.join(folder, "nvcc")
        with open(path, "w") as handle:
            handle.write("#!/bin/sh\nexit 0\n")
        os.chmod(path, 0o755)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(gpu_preprocess, "NVCC_DIRS", (folder or "/nonexistent/cuda/bin",))


def record_source_modules(seen):
    """Wrap the pycuda double's SourceModule to record the keyword arguments it is given."""
    compiler = sys.modules["pycuda.compiler"]
    original = compiler.SourceModule

    def recording(source, **kwargs):
        seen.append(kwargs)
        return original(source, **kwargs)
    compiler.SourceModule = recording


def test_gpu_preprocessing_in_the_backend(tmp_path, tiny, monkeypatch):
    toolkit = str(tmp_path / "cuda" / "bin")
    nvcc_only_at(monkeypatch, toolkit)
    with doubles("10.3", NANO):
        register_kernel_emulator()
        compiled = []
        record_source_modules(compiled)
        backend = load(tiny, options(tmp_path, preprocess="gpu"))
        try:
            assert backend.accepts_frames() and backend.describe()["preprocess"] == "gpu"
            # nvcc is not on the service's PATH: SourceModule is told where it is.
            assert [kw.get("nvcc") for kw in compiled] == [os.path.join(toolkit, "nvcc")]
            pre = Preprocessor(tiny.input)
            for frame in sample_frames():
                got = backend.infer_frame(frame)["logits"]
                want = backend.infer(pre(frame))["logits"]
                np.testing.assert_allclose(got, want, atol=0.05)
        finally:
            backend.close()
        stats = pycuda_double.stats()
        assert stats.launches >= 4 and stats.frees_without_context == 0
        assert stats.pushes == stats.pops == 1


def test_gpu_preprocessing_unavailable(tmp_path, tiny, monkeypatch):
    toolkit = str(tmp_path / "cuda" / "bin")
    nvcc_only_at(monkeypatch, toolkit)
    with doubles("10.3", NANO):  # no kernel stand-in: SourceModule fails as nvcc would
        auto = load(tiny, options(tmp_path, preprocess="auto"))
        auto.close()
        assert not auto.accepts_frames() and auto.preprocess_mode == "cpu"
        assert any("GPU preprocessing unavailable" in n and os.path.join(toolkit, "nvcc") in n
                   for n in auto.notes), auto.notes
        with pytest.raises(BackendError, match="backend.preprocess is gpu but GPU preprocessing "
                                               "is unusable"):
            load(tiny, options(tmp_path, preprocess="gpu"))
        assert pycuda_double.stats().pushes == pycuda_double.stats().pops == 2


def test_gpu_preprocessing_without_nvcc_falls_back_to_the_cpu(tmp_path, tiny, monkeypatch):
    """The service's PATH has no CUDA folder and there is no toolkit: one clear line, CPU."""
    nvcc_only_at(monkeypatch, None)
    with doubles("10.3", NANO):
        register_kernel_emulator()  # the kernel would run: only nvcc is missing
        auto = load(tiny, options(tmp_path, preprocess="auto"))
        try:
            assert auto.preprocess_mode == "cpu" and not auto.accepts_frames()
            notes = [n for n in auto.notes if "GPU preprocessing unavailable" in n]
            assert len(notes) == 1 and "\n" not in notes[0], auto.notes
            assert "needs nvcc" in notes[0] and "CUDA_HOME" in notes[0]
            frame = sample_frames()[0]
            assert auto.infer(Preprocessor(tiny.input)(frame))["logits"].shape[-1] == 10
        finally:
            auto.close()
        with pytest.raises(BackendError, match="needs nvcc .*backend.preprocess: cpu"):
            load(tiny, options(tmp_path, preprocess="gpu"))


# ---------------------------------------------------------------------------------------------
# Progress, profiling, CLI entry points
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("generation", ["8.2", "10.3"])
def test_progress_phases(tmp_path, tiny, generation):
    with doubles(generation, NANO):
        seen = []
        backend = load(tiny, options(tmp_path), progress=lambda *a: seen.append(a))
        backend.close()
        phases = [p for p, _, _ in seen]
        order = ["cache", "preflight", "parsing", "building", "serializing", "done", "validating"]
        positions = [phases.index(p) for p in order]
        assert positions == sorted(positions), phases
        if generation == "10.3":  # IProgressMonitor names the builder's phase
            assert ("building", None, "Building engine (3 steps)") in seen


def test_build_timer_reports_elapsed_seconds_while_building(tmp_path, tiny):
    """The timer thread reports while TensorRT is busy (the double blocks until it does)."""
    from agent.backends.tensorrt.build import build_engine
    with doubles("8.2", NANO) as trt:
        reported = threading.Event()
        original = trt.Builder.build_serialized_network

        def slow_build(self, network, config):
            assert reported.wait(10), "no elapsed-time report while building"
            return original(self, network, config)

        trt.Builder.build_serialized_network = slow_build
        seen = []

        def progress(phase, fraction, detail):
            seen.append((phase, detail))
            if phase == "building" and "elapsed" in detail:
                reported.set()

        build_engine(tiny.onnx_path, precision="fp32", trt=trt, progress=progress,
                     progress_interval=0.01)
        assert any(p == "building" and detail.endswith("s elapsed") for p, detail in seen)
        assert seen[-1][0] == "done"


@pytest.mark.parametrize("generation", ["8.2", "10.3"])
def test_profile_reports_layers_sorted_by_time(tmp_path, tiny, generation):
    from agent.backends.tensorrt.profile import profile
    from agent.cli.engine import cmd_profile
    with doubles(generation, NANO):
        backend = load(tiny, options(tmp_path))
        try:
            rows = profile(backend, runs=4)
        finally:
            backend.close()
        assert [r.name for r in rows][:1] == ["fc0"]  # the double's slowest stand-in layer
        times = [r.avg_ms for r in rows]
        assert times == sorted(times, reverse=True)
        assert abs(sum(r.percent for r in rows) - 100.0) < 1e-6
        lines = []
        assert cmd_profile(tiny, options(tmp_path), runs=3, log=lines.append) == 0
        table = [ln for ln in lines if ln.startswith(("conv0", "relu0", "gap0", "reshape0",
                                                      "fc0"))]
        assert len(table) == 5 and table[0].startswith("fc0")


def test_cmd_build_writes_engine_and_record(tmp_path, tiny):
    from agent.cli.engine import cmd_build
    with doubles("10.3", NANO):
        lines = []
        out = str(tmp_path / "tiny.engine")
        rc = cmd_build(tiny.onnx_path, "fp16", None, out, 64, 1, None, str(tmp_path / "var"),
                       lines.append)
        assert rc == 0, lines
        assert os.path.getsize(out) > 0
        record = json.load(open(out + ".json"))
        assert record["built_precision"] == "fp16" and record["gpu"] == "NVIDIA Tegra X1"
        assert any(ln.startswith("[parsing]") for ln in lines)
        assert lines[-1].startswith("wrote {} (".format(out))
        bad = cmd_build(str(tmp_path / "missing.onnx"), "fp16", None, None, 64, 1, None,
                        str(tmp_path / "var"), lines.append)
        assert bad == 1 and "does not exist" in lines[-1]


def test_cli_entry_points_without_tensorrt(tmp_path, tiny, monkeypatch):
    from agent.cli.engine import cmd_build, cmd_profile
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    lines = []
    assert cmd_build(tiny.onnx_path, "fp16", None, None, 64, 1, None, str(tmp_path),
                     lines.append) == 2
    assert cmd_profile(tiny, options(tmp_path), 5, lines.append) == 2
    expected = ("TensorRT is not installed: on a Jetson it comes with JetPack "
                "(python3-libnvinfer); on x86 `pip install tensorrt`")
    assert lines == [expected, expected]


def test_package_imports_without_tensorrt_pycuda_or_onnx():
    code = ("import sys\n"
            "for name in ('tensorrt', 'pycuda', 'pycuda.driver', 'onnx'):\n"
            "    sys.modules[name] = None\n"
            "import agent.backends.tensorrt as t, agent.backends.tensorrt.build, "
            "agent.backends.tensorrt.profile, agent.backends.validation, agent.cli.engine\n"
            "from agent.backends.base import BackendOptions\n"
            "from agent.store.package import ModelPackage\n"
            "p = ModelPackage.load('models/efficientnet_lite0')\n"
            "try:\n"
            "    t.TensorRTBackend(p, BackendOptions()).load()\n"
            "except Exception as exc:\n"
            "    print(type(exc).__name__, exc)\n")
    out = subprocess.check_output([sys.executable, "-c", code], cwd=ROOT,
                                  universal_newlines=True)
    assert out.startswith("BackendError TensorRT is not installed"), out


def test_python36_compatible():
    vermin = os.path.join(os.path.dirname(sys.executable), "vermin")
    if not os.path.exists(vermin):
        pytest.skip("vermin is not installed in this environment")
    files = [os.path.join(ROOT, "agent", "backends", "tensorrt"),
             os.path.join(ROOT, "agent", "backends", "validation.py"),
             os.path.join(ROOT, "agent", "cli", "engine.py")]
    out = subprocess.run([vermin, "-q", "--no-tips", "--violations", "-t=3.6-"] + files,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True)
    assert out.stdout.strip() == "", out.stdout


# ---------------------------------------------------------------------------------------------
# The doubles are as strict as the real libraries (so the tests above can fail)
# ---------------------------------------------------------------------------------------------
def test_pycuda_double_needs_init_before_any_driver_call():
    from agent.backends.tensorrt.cuda import CudaContext
    with doubles("10.3", NANO):
        drv = sys.modules["pycuda.driver"]
        for call in (drv.Device.count, lambda: drv.Device(0)):
            with pytest.raises(drv.LogicError, match="failed: initialization error"):
                call()
        with CudaContext(0) as cuda:  # the agent calls init() first
            assert cuda.device_name() == "NVIDIA Tegra X1"
        assert pycuda_double.stats().init_calls == 1


def test_async_copies_are_not_visible_before_the_stream_is_synchronised():
    from agent.backends.tensorrt.cuda import CudaContext
    with doubles("10.3", NANO):
        with CudaContext(0) as cuda:
            host = cuda.pinned((4,), np.float32)
            assert np.isnan(host).all(), "new pinned memory is uninitialised"
            dev = cuda.device_alloc(host.nbytes)
            host[:] = [1, 2, 3, 4]
            cuda.htod_async(dev, host)
            out = cuda.pinned((4,), np.float32)
            out[:] = -1
            cuda.dtoh_async(out, dev)
            assert (out == -1).all(), "a queued copy must not land before synchronize()"
            cuda.synchronize()
            assert out.tolist() == [1, 2, 3, 4]


def test_engine_execution_results_appear_only_after_synchronize(tmp_path, tiny):
    for generation in ("8.2", "10.3"):
        with doubles(generation, NANO):
            backend = load(tiny, options(tmp_path / generation,
                                         validate=ValidationPolicy(frames=0)))
            try:
                cuda, io = backend._cuda, backend._buffers.io
                inp = backend._buffers.by_name["input"]
                out = backend._buffers.by_name["logits"]
                inp.host[:] = 0.5
                out.host[:] = 7.0
                cuda.htod_async(inp.device, inp.host)
                io.execute(cuda.stream.handle)
                cuda.dtoh_async(out.host, out.device)
                assert (out.host == 7.0).all(), generation
                cuda.synchronize()
                assert not (out.host == 7.0).any() and np.isfinite(out.host).all()
            finally:
                backend.close()


def test_deserialisation_and_context_creation_need_a_current_context(tmp_path, tiny):
    from agent.backends.tensorrt.cuda import CudaContext
    from agent.backends.tensorrt.build import build_engine
    with doubles("10.3", NANO) as trt:
        with CudaContext(0):
            data = build_engine(tiny.onnx_path, precision="fp32", trt=trt).data
        errors = []

        class Log(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)

            def log(self, severity, msg):
                errors.append(msg)

        runtime = trt.Runtime(Log())
        assert runtime.deserialize_cuda_engine(data) is None
        assert "invalid device context" in errors[-1]
        with CudaContext(0):
            engine = runtime.deserialize_cuda_engine(data)
            assert engine is not None
        assert engine.create_execution_context() is None
        assert "invalid device context" in errors[-1]


@pytest.mark.parametrize("generation,explicit_needed", [("8.2", True), ("8.5", True),
                                                        ("10.3", False), ("11", False)])
def test_network_creation_flags_per_generation(tmp_path, tiny, generation, explicit_needed):
    with doubles(generation, NANO) as trt:
        logger = trt.Logger()
        builder = trt.Builder(logger)
        parser = trt.OnnxParser(builder.create_network(0), logger)
        assert parser.parse(open(tiny.onnx_path, "rb").read()) is not explicit_needed
        flags = trt.NetworkDefinitionCreationFlag
        if explicit_needed:
            assert "EXPLICIT_BATCH NetworkDefinitionCreationFlag" in parser.get_error(0).desc()
            assert parser.get_error(0).node() == -1
        assert hasattr(flags, "EXPLICIT_BATCH") is (generation != "11")


def test_dla_engine_needs_the_runtimes_dla_core(tmp_path, tiny):
    """TensorRT 8+ leaves IRuntime's DLA core at -1: the agent sets it for a DLA engine."""
    from agent.backends.tensorrt.cuda import CudaContext
    with doubles("8.2", XAVIER) as trt:
        backend = load(tiny, options(tmp_path, dla_core=1))
        try:
            assert backend._runtime.DLA_core == 1
            out = backend.infer(np.zeros((1, 3, 32, 32), np.float32))["logits"]
            assert out.shape == (1, 10)
        finally:
            backend.close()
        with CudaContext(0):
            runtime = trt.Runtime(trt.Logger())
            assert runtime.DLA_core == -1
            data = open(backend.engine_path, "rb").read()
            assert runtime.deserialize_cuda_engine(data) is None
            runtime.DLA_core = 0
            assert runtime.deserialize_cuda_engine(data) is not None


def test_gpu_name_and_compute_capability_come_from_cuda_without_nvml(monkeypatch):
    """A Jetson has no NVML: the fingerprint asks the CUDA driver (pycuda)."""
    from agent.environment import gpu_info
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with doubles("8.2", TX2):
        info = gpu_info()
        assert info["name"] == "NVIDIA Tegra X2" and info["compute_capability"] == "6.2"
        assert info["source"] == "cuda"
        assert pycuda_double.Context.get_current() is None
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    monkeypatch.setitem(sys.modules, "pycuda", None)
    assert gpu_info() == {}


def test_the_fallback_chain_follows_the_backend_registry(monkeypatch):
    from agent.backends import plan_chain

    def chain(**kw):
        return [(kind, opts.precision) for kind, opts in plan_chain(BackendOptions(**kw))]

    with doubles("8.2", NANO):
        assert chain(kind="auto", precision="int8") == [
            ("tensorrt", "int8"), ("tensorrt", "fp32"), ("onnxruntime", "int8")]
        assert chain(kind="auto", precision="fp32") == [("tensorrt", "fp32"),
                                                        ("onnxruntime", "fp32")]
        assert chain(kind="onnxruntime", precision="fp16") == [("onnxruntime", "fp16")]
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert chain(kind="auto", precision="fp16") == [("onnxruntime", "fp16")]
    assert chain(kind="tensorrt", precision="fp16") == [
        ("tensorrt", "fp16"), ("tensorrt", "fp32"), ("onnxruntime", "fp16")]
