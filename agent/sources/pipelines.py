"""GStreamer launch strings for the camera sources (pure functions; docs/PLATFORM.md
section 5), all ending in an appsink that keeps only the newest frame."""

import re
from fractions import Fraction

APPSINK = "appsink drop=1 max-buffers=1 sync=false"
TO_BGR = "videoconvert ! video/x-raw,format=BGR"
# nvvidconv flip-method for source.flip (0 none, 2 rotate 180, 4 horizontal, 6 vertical).
CSI_FLIP_METHODS = {"none": 0, "rotate-180": 2, "horizontal": 4, "vertical": 6}
CODECS = ("h264", "h265")
V4L2_FORMATS = ("raw", "mjpeg")


def framerate_caps(fps: float) -> str:
    """`F/1` for GStreamer caps (a fraction for rates like 29.97); '' when fps is 0 (any)."""
    if not fps or fps <= 0:
        return ""
    rate = Fraction(fps).limit_denominator(1001)
    return "{}/{}".format(rate.numerator, rate.denominator)


def csi_pipeline(sensor_id: int, width: int, height: int, fps: float, flip: str = "none") -> str:
    """The nvarguscamerasrc pipeline for a Jetson CSI camera (PLATFORM.md section 5)."""
    if flip not in CSI_FLIP_METHODS:
        raise ValueError("flip {!r} is not one of {}".format(flip, ", ".join(CSI_FLIP_METHODS)))
    rate = framerate_caps(fps)
    return ("nvarguscamerasrc sensor-id={sid} ! video/x-raw(memory:NVMM),width={w},height={h},"
            "format=NV12{rate} ! nvvidconv flip-method={flip} ! video/x-raw,width={w},height={h},"
            "format=BGRx ! {bgr} ! {sink}").format(
                sid=sensor_id, w=width, h=height, rate=",framerate=" + rate if rate else "",
                flip=CSI_FLIP_METHODS[flip], bgr=TO_BGR, sink=APPSINK)


def v4l2_pipeline(device: str, width: int, height: int, fps: float, fmt: str = "raw") -> str:
    """The v4l2src pipeline for a USB camera; `fmt` mjpeg for cameras that send JPEG at HD sizes."""
    rate = framerate_caps(fps)
    caps = "width={},height={}{}".format(width, height, ",framerate=" + rate if rate else "")
    if fmt == "raw":
        head = "v4l2src device={} ! video/x-raw,{}".format(device, caps)
    elif fmt == "mjpeg":
        head = "v4l2src device={} ! image/jpeg,{} ! jpegdec".format(device, caps)
    else:
        raise ValueError("format {!r} is not one of {}".format(fmt, ", ".join(V4L2_FORMATS)))
    return "{} ! {} ! {}".format(head, TO_BGR, APPSINK)


def gst_quote(value: str) -> str:
    """A property value for gst_parse_launch: as is when plain, else double-quoted."""
    if value and re.match(r"^[A-Za-z0-9_.:/?&=%@+~-]+$", value):
        return value
    return '"{}"'.format(value.replace("\\", "\\\\").replace('"', '\\"'))


def rtsp_pipeline(url: str, codec: str = "h264", latency: int = 200,
                  hw_decode: bool = False) -> str:
    """rtspsrc -> depay -> parse -> decoder -> BGR appsink.

    hw_decode: `nvv4l2decoder ! nvvidconv` (Jetson); else `avdec_h264`/`avdec_h265` (FFmpeg).
    """
    if codec not in CODECS:
        raise ValueError("codec {!r} is not one of {}".format(codec, ", ".join(CODECS)))
    head = "rtspsrc location={} latency={} ! rtp{c}depay ! {c}parse".format(
        gst_quote(url), int(latency), c=codec)
    if hw_decode:
        decode = "nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx"
    else:
        decode = "avdec_{}".format(codec)
    return "{} ! {} ! {} ! {}".format(head, decode, TO_BGR, APPSINK)


def launch_command(pipeline: str) -> str:
    """The pipeline as a gst-launch-1.0 argument list: appsink swapped for fakesink, caps quoted."""
    parts = [p.strip() for p in pipeline.split(" ! ")]
    if parts and parts[-1].startswith("appsink"):
        parts[-1] = "fakesink"
    return " ! ".join("'{}'".format(p) if "(" in p else p for p in parts)
