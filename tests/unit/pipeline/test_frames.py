"""FrameSlot: the capture -> inference hand-over (live keeps the newest, files keep all)."""

import threading

import numpy as np

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
