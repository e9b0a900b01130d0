"""The frame pipeline: capture -> preprocess -> infer -> publish, one thread per stage."""
