"""File, video and synthetic sources, and source URI errors."""

import cv2
import numpy as np
import pytest

from agent.errors import SourceError
from agent.sources import make_source
from support.paths import SAMPLES


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
