"""FrameSlot: the capture -> inference hand-over (live keeps the newest, files keep all)."""

import threading

import numpy as np
import pytest

from agent.pipeline.frames import Frame, FrameSlot


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


def test_frame_slot_file_mode_lets_capture_work_depth_frames_ahead():
    slot = FrameSlot(live=False, depth=2)
    stop = threading.Event()
    frames = [Frame(np.zeros((1, 1, 3), np.uint8), i, 0.0, 0.0) for i in range(3)]
    assert slot.put(frames[0], stop) and slot.put(frames[1], stop)  # neither waits
    third = []
    t = threading.Thread(target=lambda: third.append(slot.put(frames[2], stop)))
    t.start()
    t.join(0.3)
    assert t.is_alive() and third == []  # full: the third put waits for a get
    assert slot.get(1.0).seq == 0
    t.join(10)
    assert third == [True]
    assert [slot.get(1.0).seq, slot.get(1.0).seq] == [1, 2] and slot.dropped == 0
    slot.put(frames[0], stop)
    slot.put(frames[1], stop)
    assert slot.clear() == 2 and slot.get(0.01) is None  # shutdown drops what waits
    slot.end()
    assert slot.ended and slot.get(0.01) is None


def test_frame_slot_live_ignores_depth_and_an_ended_slot_still_hands_what_it_holds():
    slot = FrameSlot(live=True, depth=3)
    stop = threading.Event()
    for i in range(4):
        slot.put(Frame(np.zeros((1, 1, 3), np.uint8), i, 0.0, 0.0), stop)
    assert slot.dropped == 3
    files = FrameSlot(live=False)
    files.put(Frame(np.zeros((1, 1, 3), np.uint8), 7, 0.0, 0.0), stop)
    files.end()
    assert not files.ended and files.get(0.01).seq == 7 and files.ended
    with pytest.raises(ValueError):
        FrameSlot(live=False, depth=0)
