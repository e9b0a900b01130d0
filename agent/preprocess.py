"""Manifest-driven preprocessing: a BGR uint8 frame in, the model's float32 input tensor out.

The geometry (which source rectangle lands where in the input) is computed by `ResizePlan`
so a GPU implementation can reproduce exactly what the CPU path does: bilinear sampling with
OpenCV's half-pixel-centre convention, src = (dst + 0.5) * scale - 0.5.
"""

from typing import Tuple

import numpy as np

from .store.package import InputSpec


class ResizePlan(object):
    """Where the source crop goes in the model input, for one source frame size.

    src_* is the rectangle of the source frame that is sampled (floats, pixel edges);
    dst_* is the rectangle of the input it fills. Outside dst (letterbox only) the input holds
    the mean colour, which normalises to zero.
    """

    def __init__(self, src_x: float, src_y: float, src_w: float, src_h: float,
                 dst_x: int, dst_y: int, dst_w: int, dst_h: int) -> None:
        self.src_x, self.src_y, self.src_w, self.src_h = src_x, src_y, src_w, src_h
        self.dst_x, self.dst_y, self.dst_w, self.dst_h = dst_x, dst_y, dst_w, dst_h

    def __repr__(self) -> str:
        return "ResizePlan(src=({:.1f},{:.1f},{:.1f},{:.1f}), dst=({},{},{},{}))".format(
            self.src_x, self.src_y, self.src_w, self.src_h,
            self.dst_x, self.dst_y, self.dst_w, self.dst_h)


def plan_resize(spec: InputSpec, frame_h: int, frame_w: int) -> ResizePlan:
    """The crop/scale plan of `spec.resize_mode` for a frame of frame_w x frame_h."""
    out_h, out_w = spec.height, spec.width
    if spec.resize_mode == "shorter_side_crop":
        scale = float(spec.resize_size) / min(frame_h, frame_w)
        crop_w = min(frame_w, out_w / scale)
        crop_h = min(frame_h, out_h / scale)
        return ResizePlan((frame_w - crop_w) / 2.0, (frame_h - crop_h) / 2.0, crop_w, crop_h,
                          0, 0, out_w, out_h)
    if spec.resize_mode == "letterbox":
        scale = min(float(out_w) / frame_w, float(out_h) / frame_h)
        new_w = max(1, int(round(frame_w * scale)))
        new_h = max(1, int(round(frame_h * scale)))
        return ResizePlan(0.0, 0.0, float(frame_w), float(frame_h),
                          (out_w - new_w) // 2, (out_h - new_h) // 2, new_w, new_h)
    return ResizePlan(0.0, 0.0, float(frame_w), float(frame_h), 0, 0, out_w, out_h)


class Preprocessor(object):
    """Turns frames into input tensors as the model's manifest says. Pure numpy + cv2."""

    def __init__(self, spec: InputSpec) -> None:
        import cv2  # local: the package imports without OpenCV
        self._cv2 = cv2
        self.spec = spec
        self._mean = np.asarray(spec.mean, dtype=np.float32)
        self._inv_std = (1.0 / np.asarray(spec.std, dtype=np.float32)).astype(np.float32)
        self._mean_chw = self._mean.reshape(3, 1, 1)
        self._inv_std_chw = self._inv_std.reshape(3, 1, 1)
        self._plans = {}  # type: dict

    def plan(self, frame_h: int, frame_w: int) -> ResizePlan:
        key = (frame_h, frame_w)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = plan_resize(self.spec, frame_h, frame_w)
        return plan

    def resize(self, frame: np.ndarray) -> np.ndarray:
        """The frame cropped and scaled to the input's HxW, still BGR uint8."""
        cv2 = self._cv2
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError("frame must be HxWx3 uint8 (BGR), got shape {} dtype {}".format(
                frame.shape, frame.dtype))
        h, w = frame.shape[:2]
        plan = self.plan(h, w)
        out_h, out_w = self.spec.height, self.spec.width
        x0, y0 = plan.src_x, plan.src_y
        if (plan.dst_w, plan.dst_h) == (w, h) and plan.src_w == w and plan.src_h == h:
            scaled = frame
        elif float(x0).is_integer() and float(y0).is_integer() and \
                float(plan.src_w).is_integer() and float(plan.src_h).is_integer():
            crop = frame[int(y0):int(y0 + plan.src_h), int(x0):int(x0 + plan.src_w)]
            scaled = cv2.resize(crop, (plan.dst_w, plan.dst_h), interpolation=cv2.INTER_LINEAR)
        else:
            # Sub-pixel crop: an affine warp samples exactly the plan's rectangle.
            sx = plan.src_w / plan.dst_w
            sy = plan.src_h / plan.dst_h
            matrix = np.array([[sx, 0.0, x0 + 0.5 * sx - 0.5],
                               [0.0, sy, y0 + 0.5 * sy - 0.5]], dtype=np.float64)
            scaled = cv2.warpAffine(frame, matrix, (plan.dst_w, plan.dst_h),
                                    flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_REPLICATE)
        if (plan.dst_w, plan.dst_h) == (out_w, out_h):
            return scaled
        canvas = np.empty((out_h, out_w, 3), dtype=np.uint8)
        canvas[...] = np.clip(np.rint(self._mean[::-1] if self.spec.color == "RGB"
                                      else self._mean), 0, 255).astype(np.uint8)
        canvas[plan.dst_y:plan.dst_y + plan.dst_h, plan.dst_x:plan.dst_x + plan.dst_w] = scaled
        return canvas

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """BGR uint8 HxWx3 at the input size -> float32 tensor of the input's shape."""
        order = (2, 1, 0) if self.spec.color == "RGB" else (0, 1, 2)
        if self.spec.layout == "NCHW":
            # Two passes straight into the output: the uint8 HWC image seen as CHW (a view,
            # channels reordered by the stride), minus the mean as float32, times 1/std: the
            # float32 operations of astype/subtract/transpose, without their temporaries.
            h, w = image.shape[:2]
            out = np.empty((1, 3, h, w), dtype=np.float32)
            chw = image.transpose(2, 0, 1)
            if order != (0, 1, 2):
                chw = chw[::-1]
            np.subtract(chw, self._mean_chw, out=out[0], dtype=np.float32)
            out[0] *= self._inv_std_chw
            return out
        tensor = image[:, :, list(order)].astype(np.float32)
        tensor -= self._mean
        tensor *= self._inv_std
        return tensor[np.newaxis]

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return self.normalize(self.resize(frame))

    @property
    def output_shape(self) -> Tuple[int, ...]:
        return tuple(self.spec.shape)
