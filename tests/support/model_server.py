"""Test helpers shared by several test modules (from tests/system/test_model_updates.py)."""

import functools
import http.server
import socketserver
import threading


MANIFEST = {"task": "classification", "file": "model.onnx", "labels": "labels.txt",
            "input": {"name": "input", "shape": [1, 3, 224, 224], "layout": "NCHW",
                      "color": "RGB", "resize": {"mode": "shorter_side_crop", "size": 256},
                      "mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0]},
            "output": {"name": "logits", "activation": "softmax"}}


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client killed mid-download (the kill -9 tests) is expected here


class FileServer(object):
    """A real HTTP server on 127.0.0.1 serving a directory."""

    def __init__(self, root):
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = _Server(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name):
        return "http://127.0.0.1:{}/{}".format(self.port, name)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve_bundled_model(root):
    """A FileServer over `root` (a new directory) holding the bundled model.onnx and
    labels.txt; the caller closes it."""
    import os
    import shutil
    from support.paths import MODEL_DIR
    root.mkdir()
    for name in ("model.onnx", "labels.txt"):
        shutil.copy(os.path.join(MODEL_DIR, name), str(root / name))
    return FileServer(root)
