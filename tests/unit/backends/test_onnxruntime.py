"""The ONNX Runtime backend's session options."""

import numpy as np

from agent.config import load_config
from agent.store.package import ModelPackage
from support.paths import MODEL_DIR
from support.strict import requires


def test_backend_spin_is_off_unless_asked():
    requires("onnxruntime")
    from agent.updates.loader import backend_options
    from agent.backends.onnxruntime import OnnxRuntimeBackend
    assert backend_options(load_config(None)).spin is False
    assert backend_options(load_config(None, ["backend.spin=true"])).spin is True
    for spin in (False, True):
        backend = OnnxRuntimeBackend(ModelPackage.load(MODEL_DIR),
                                     backend_options(load_config(None, [
                                         "backend.spin={}".format(str(spin).lower())]))).load()
        try:
            out = backend.infer(np.zeros((1, 3, 224, 224), np.float32))
            assert out["logits"].shape == (1, 1000)
        finally:
            backend.close()
