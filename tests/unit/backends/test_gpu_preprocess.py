"""GPU preprocessing kernel vs the CPU Preprocessor, on whichever OpenCV is installed.

Needs only numpy, OpenCV, PyYAML and pytest: CI runs this file on the JetPack stacks (OpenCV
4.1.1, 4.5.4, 4.8.0) and on the current one (5.x). The kernel runs through the numpy port in
gpu_kernel_emulator.py, which is tied to KERNEL_SOURCE by the last tests here (the source's
hash, and the source itself compiled for the CPU where a C++ compiler exists);
tools/gpu/check_preprocess_versions.py runs the real kernel on a GPU against every version.
"""

import os
import stat

import numpy as np
import pytest

from support.gpu_kernel_emulator import (KERNEL_SHA256, compiled_kernel, find_cxx, kernel_sha256,
                                         run_kernel)

from agent.backends.tensorrt import gpu_preprocess
from agent.backends.tensorrt.gpu_preprocess import (KERNEL_NAME, KERNEL_SOURCE, find_nvcc,
                                                    kernel_args, opencv_warp_fixed)
from agent.errors import BackendError
from agent.store.package import InputSpec, ModelPackage
from agent.preprocess import Preprocessor, plan_resize
from support.paths import ROOT

MODEL_DIR = os.path.join(ROOT, "models", "efficientnet_lite0")
SAMPLES = os.path.join(ROOT, "models", "samples")

# (label, resize mode, resize size): every mode the manifest allows; "300" puts the
# shorter_side_crop on sub-pixel edges for every frame size below (cv2.warpAffine on the CPU).
MODES = [("crop256", "shorter_side_crop", 256), ("crop300", "shorter_side_crop", 300),
         ("stretch", "stretch", None), ("letterbox", "letterbox", None)]
FRAMES = [(720, 1280), (480, 640), (517, 333), (120, 160), (1080, 1920), (101, 97)]


def spec_for(mode, size, color="RGB", layout="NCHW", mean=None, std=None):
    shape = [1, 3, 224, 224] if layout == "NCHW" else [1, 224, 224, 3]
    return InputSpec("input", shape, layout, color, mode, size,
                     mean or [123.675, 116.28, 103.53], std or [58.395, 57.12, 57.375])


def random_frame(hw, seed=1):
    return np.random.RandomState(seed).randint(0, 256, size=hw + (3,)).astype(np.uint8)


def photo(hw):
    import cv2
    names = sorted(n for n in os.listdir(SAMPLES) if n.lower().endswith((".jpg", ".png")))
    image = cv2.imread(os.path.join(SAMPLES, names[0]), cv2.IMREAD_COLOR)
    return cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)


def sub_pixel(spec, hw):
    plan = plan_resize(spec, *hw)
    return not all(float(v).is_integer() for v in (plan.src_x, plan.src_y, plan.src_w,
                                                     plan.src_h))


def levels(spec, got, want):
    """The largest difference in uint8 levels (one level is 1/std in the tensor)."""
    return float(np.max(np.abs(got - want))) * min(spec.std)


@pytest.mark.parametrize("label,mode,size", MODES, ids=[m[0] for m in MODES])
@pytest.mark.parametrize("hw", FRAMES, ids=["{}x{}".format(w, h) for h, w in FRAMES])
def test_kernel_matches_cpu_preprocessor_on_this_opencv(label, mode, size, hw):
    """Within one uint8 level of the CPU path, sub-pixel crops included (noise is the worst
    case: neighbouring pixels differ by up to 255, so a sample position that is off shows)."""
    spec = spec_for(mode, size)
    for frame in (random_frame(hw), photo(hw)):
        got = run_kernel(kernel_args(spec, *hw), frame)
        want = Preprocessor(spec)(frame).ravel()
        assert levels(spec, got, want) <= 1.0 + 1e-3, (label, hw)
        differing = np.mean(np.abs(got - want) > 1e-6)
        # cv2.resize's fixed point rounds ~12 % of samples the other way; warpAffine is
        # matched exactly (OpenCV 4.x) or to ~1 % (float sampling in newer OpenCV).
        assert differing < (0.05 if sub_pixel(spec, hw) else 0.2), (label, hw, differing)


def test_the_crop300_cases_are_sub_pixel_and_crop256_on_720p_is_not():
    """The parametrisation above covers both CPU branches (warpAffine and resize)."""
    assert all(sub_pixel(spec_for("shorter_side_crop", 300), hw) for hw in FRAMES)
    assert not sub_pixel(spec_for("shorter_side_crop", 256), (720, 1280))
    assert sub_pixel(spec_for("shorter_side_crop", 256), (120, 160))


def test_bundled_model_and_the_backend_self_check_frame():
    """The bundled model's spec on the frame the TensorRT backend's self-check uses (a random
    160x120 frame: a sub-pixel crop) and on the sample photos at their own size."""
    import cv2
    spec = ModelPackage.load(MODEL_DIR).input
    frame = np.random.RandomState(7).randint(0, 256, size=(120, 160, 3)).astype(np.uint8)
    got = run_kernel(kernel_args(spec, 120, 160), frame)
    assert levels(spec, got, Preprocessor(spec)(frame)[0].ravel()) <= 1.0 + 1e-3
    for name in sorted(os.listdir(SAMPLES)):
        if name.lower().endswith((".jpg", ".png")):
            image = cv2.imread(os.path.join(SAMPLES, name), cv2.IMREAD_COLOR)
            got = run_kernel(kernel_args(spec, *image.shape[:2]), image)
            assert levels(spec, got, Preprocessor(spec)(image).ravel()) <= 1.0 + 1e-3, name


def test_bgr_nhwc_letterbox_and_identity():
    for spec, hw in ((spec_for("letterbox", None, color="BGR", layout="NHWC"), (480, 640)),
                     (spec_for("stretch", None), (224, 224)),
                     (spec_for("shorter_side_crop", 300, color="BGR", layout="NHWC"),
                      (517, 333))):
        frame = random_frame(hw, seed=3)
        got = run_kernel(kernel_args(spec, *hw), frame)
        assert levels(spec, got, Preprocessor(spec)(frame).ravel()) <= 1.0 + 1e-3


def test_warp_probe_tells_this_opencv_apart():
    """The probe's answer is the warpAffine arithmetic this cv2 really does: with it the
    sub-pixel branch is bit-exact (4.x) or within one level (float); with the other answer
    a noisy frame is several levels off, so a wrong probe cannot pass the tests above."""
    import cv2
    fixed = opencv_warp_fixed()
    assert opencv_warp_fixed(cv2) == fixed
    spec = spec_for("shorter_side_crop", 300, mean=[0.0] * 3, std=[1.0] * 3)
    frame = random_frame((480, 640), seed=5)
    want = Preprocessor(spec)(frame).ravel()
    right = run_kernel(kernel_args(spec, 480, 640, warp_fixed=fixed), frame)
    wrong = run_kernel(kernel_args(spec, 480, 640, warp_fixed=not fixed), frame)
    assert levels(spec, right, want) == (0.0 if fixed else levels(spec, right, want))
    assert levels(spec, right, want) <= 1.0
    assert levels(spec, wrong, want) >= 3.0


def test_warp_probe_reads_both_behaviours():
    """The probe on stand-ins for both OpenCV generations, and without a usable cv2."""
    import cv2

    class Fake(object):
        INTER_LINEAR, WARP_INVERSE_MAP, BORDER_REPLICATE = (cv2.INTER_LINEAR,
                                                           cv2.WARP_INVERSE_MAP,
                                                           cv2.BORDER_REPLICATE)

        def __init__(self, value):
            self.value = value

        def warpAffine(self, src, matrix, size, flags, borderMode):
            assert matrix[0, 2] == 0.11 and size == (1, 1)
            return np.full((1, 1, 3), self.value, dtype=np.uint8)

    assert opencv_warp_fixed(Fake(32)) is True
    assert opencv_warp_fixed(Fake(28)) is False
    assert opencv_warp_fixed(object()) is False


# --- nvcc ------------------------------------------------------------------------------------
def fake_nvcc(folder):
    os.makedirs(folder)
    path = os.path.join(folder, "nvcc")
    with open(path, "w") as handle:
        handle.write("#!/bin/sh\nexit 0\n")
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path


def test_find_nvcc_without_cuda_on_path(tmp_path, monkeypatch):
    """A systemd service's PATH has no /usr/local/cuda/bin: nvcc is still found."""
    toolkit = fake_nvcc(str(tmp_path / "cuda" / "bin"))
    monkeypatch.setattr(gpu_preprocess, "NVCC_DIRS", (str(tmp_path / "cuda" / "bin"),))
    assert find_nvcc({"PATH": "/usr/bin:/bin"}) == toolkit
    home = fake_nvcc(str(tmp_path / "home" / "bin"))
    assert find_nvcc({"PATH": "/usr/bin:/bin", "CUDA_HOME": str(tmp_path / "home")}) == home
    assert find_nvcc({"PATH": "", "CUDA_PATH": str(tmp_path / "home")}) == home
    on_path = fake_nvcc(str(tmp_path / "path"))
    assert find_nvcc({"PATH": str(tmp_path / "path"), "CUDA_HOME": str(tmp_path / "home")}) \
        == on_path


def test_find_nvcc_missing_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_preprocess, "NVCC_DIRS", (str(tmp_path / "none"),))
    not_executable = tmp_path / "nx" / "bin"
    not_executable.mkdir(parents=True)
    (not_executable / "nvcc").write_text("")
    with pytest.raises(BackendError) as info:
        find_nvcc({"PATH": "/usr/bin:/bin", "CUDA_HOME": str(tmp_path / "nx")})
    message = str(info.value)
    assert "\n" not in message
    for part in ("nvcc", "CUDA_HOME", str(tmp_path / "none"), "backend.preprocess: cpu"):
        assert part in message


# --- the numpy port is the kernel --------------------------------------------------------
def test_emulator_was_written_for_this_kernel_source():
    """Editing KERNEL_SOURCE without porting the change to gpu_kernel_emulator.run_kernel
    (and then updating KERNEL_SHA256 there) fails here, on every machine."""
    assert kernel_sha256(KERNEL_SOURCE) == KERNEL_SHA256, (
        "KERNEL_SOURCE changed: port the change to tests/support/gpu_kernel_emulator.py run_kernel, "
        "then set its KERNEL_SHA256 to {}".format(kernel_sha256(KERNEL_SOURCE)))


@pytest.fixture(scope="module")
def cpu_kernel(tmp_path_factory):
    if find_cxx() is None:
        pytest.skip("no C++ compiler (g++/c++/clang++) to build KERNEL_SOURCE for the CPU")
    return compiled_kernel(KERNEL_SOURCE, KERNEL_NAME, str(tmp_path_factory.mktemp("kernel")))


@pytest.mark.parametrize("warp_fixed", [False, True])
def test_numpy_port_is_bit_exact_with_the_compiled_kernel_source(cpu_kernel, warp_fixed):
    cases = [(spec_for("shorter_side_crop", 300), (517, 333)),
             (spec_for("shorter_side_crop", 256), (720, 1280)),
             (spec_for("letterbox", None, color="BGR", layout="NHWC"), (101, 97)),
             (spec_for("stretch", None), (224, 224))]
    for spec, hw in cases:
        frame = random_frame(hw, seed=11)
        args = kernel_args(spec, *hw, warp_fixed=warp_fixed)
        want = run_kernel(args, frame)
        got = cpu_kernel(args, frame)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (spec.resize_mode, hw)
