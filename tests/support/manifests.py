"""A small valid model.yaml as a dict, with dotted-key changes, for manifest and preprocessing tests."""


def manifest_dict(**changes):
    """`changes` like {"input.resize": {...}} replace single keys of the base manifest."""
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
