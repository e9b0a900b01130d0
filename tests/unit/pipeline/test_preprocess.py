"""Preprocessing as the manifest says: resize plans, normalisation, colour, layout."""

import numpy as np
import pytest

from agent.preprocess import Preprocessor, plan_resize
from agent.store.package import ModelPackage
from support.manifests import manifest_dict


def _spec(mode, size=None, shape=(1, 3, 4, 6), color="RGB", layout="NCHW"):
    raw = manifest_dict()
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


@pytest.mark.parametrize("color,shape,layout", [("RGB", (1, 3, 4, 6), "NCHW"),
                                                ("BGR", (1, 3, 4, 6), "NCHW"),
                                                ("RGB", (1, 4, 6, 3), "NHWC")])
def test_normalization_matches_the_plain_formula_pixel_for_pixel(color, shape, layout):
    """Every pixel and channel where it belongs, exactly the float32 (x - mean) * (1 / std) of
    the textbook astype/subtract/transpose (a uniform frame would not show a plane or an axis
    swapped)."""
    spec = _spec("stretch", color=color, shape=shape, layout=layout)
    frame = np.random.RandomState(3).randint(0, 256, (4, 6, 3)).astype(np.uint8)
    image = frame[:, :, ::-1] if color == "RGB" else frame
    want = (image.astype(np.float32) - np.float32([10.0, 20.0, 30.0])) * \
        (1.0 / np.float32([2.0, 4.0, 8.0])).astype(np.float32)
    if layout == "NCHW":
        want = want.transpose(2, 0, 1)
    out = Preprocessor(spec)(frame)
    assert out.dtype == np.float32 and out.shape == shape
    assert np.array_equal(out[0], want)
