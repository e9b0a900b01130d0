"""Test helpers shared by several test modules (from tests/unit/store/test_models_store.py)."""

import hashlib
import http.server
import os
import socket
import socketserver
import ssl
import threading
from typing import Any, Dict, Optional

import numpy as np
import yaml
import onnx
from onnx import TensorProto, helper


LABELS = b"apple\nbanana\ncherry\ndate\nelderberry\n"


# ----------------------------------------------------------------------------- tiny models

def tiny_onnx_bytes(seed: int = 0, side: int = 32, classes: int = 5) -> bytes:
    """A real ONNX classifier: Conv -> GlobalAveragePool -> Reshape -> Gemm, 1x3xSxS input."""
    rng = np.random.RandomState(seed)
    inits = [
        helper.make_tensor("conv_w", TensorProto.FLOAT, [4, 3, 3, 3],
                           rng.randn(4, 3, 3, 3).astype(np.float32).ravel().tolist()),
        helper.make_tensor("conv_b", TensorProto.FLOAT, [4], rng.randn(4).tolist()),
        helper.make_tensor("flat", TensorProto.INT64, [2], [1, 4]),
        helper.make_tensor("fc_w", TensorProto.FLOAT, [classes, 4],
                           rng.randn(classes, 4).astype(np.float32).ravel().tolist()),
        helper.make_tensor("fc_b", TensorProto.FLOAT, [classes], rng.randn(classes).tolist()),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["conv"], ["pooled"]),
        helper.make_node("Reshape", ["pooled", "flat"], ["features"]),
        helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                      [1, 3, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="edge-agent-tests")
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model.SerializeToString()


def tiny_manifest(side: int = 32) -> Dict[str, Any]:
    """The manifest fields a sender puts inline (name, version, sha256 come from the command)."""
    return {"task": "classification", "file": "model.onnx",
            "input": {"name": "input", "shape": [1, 3, side, side], "layout": "NCHW",
                      "color": "RGB", "resize": {"mode": "stretch"},
                      "mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0]},
            "output": {"name": "logits", "activation": "softmax"}}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_package_dir(path: str, name: str = "tiny", version: str = "1", seed: int = 0) -> str:
    """A package directory as a model author ships it."""
    os.makedirs(path)
    model = tiny_onnx_bytes(seed)
    with open(os.path.join(path, "model.onnx"), "wb") as handle:
        handle.write(model)
    with open(os.path.join(path, "labels.txt"), "wb") as handle:
        handle.write(LABELS)
    manifest = tiny_manifest()
    manifest.update({"name": name, "version": version, "sha256": sha(model),
                     "labels": "labels.txt"})
    with open(os.path.join(path, "model.yaml"), "w") as handle:
        yaml.safe_dump(manifest, handle)
    return path


# ----------------------------------------------------------------------------- HTTP server

class Route(object):
    """What the test server answers for one path.

    mode: ok | truncate (announce all, send half, close) | stall (send half, then block until
    the test releases) | no_length (no Content-Length, body until close) | redirect | status.
    """

    def __init__(self, body: bytes = b"", mode: str = "ok", content_length: Optional[int] = None,
                 location: Optional[str] = None, status: int = 200) -> None:
        self.body = body
        self.mode = mode
        self.content_length = content_length
        self.location = location
        self.status = status


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        server = self.server  # type: Any
        server.requests.append(self.path)
        server.auth.append(self.headers.get("Authorization"))
        route = server.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_error(404, "Not Found")
            return
        if route.mode == "redirect":
            self.send_response(302)
            self.send_header("Location", route.location)
            self.end_headers()
            return
        body = route.body
        self.send_response(route.status)
        if route.mode != "no_length":
            length = route.content_length if route.content_length is not None else len(body)
            self.send_header("Content-Length", str(length))
        self.end_headers()
        if route.mode in ("truncate", "stall"):
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            if route.mode == "stall":
                server.stalled.set()
                server.release.wait(30)
            return
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first (oversized bodies)

    def log_message(self, *args: Any) -> None:
        pass


class _ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


class FileServer(object):
    """A real HTTP(S) server on 127.0.0.1 with a free port, serving `routes`."""

    def __init__(self, context: Optional[ssl.SSLContext] = None) -> None:
        self.httpd = _ThreadingServer(("127.0.0.1", 0), _Handler)
        if context is not None:
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.routes = {}  # type: ignore
        self.httpd.requests = []  # type: ignore
        self.httpd.auth = []  # type: ignore
        self.httpd.release = threading.Event()  # type: ignore
        self.httpd.stalled = threading.Event()  # type: ignore
        self.scheme = "https" if context is not None else "http"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,),
                                       daemon=True)
        self.thread.start()

    @property
    def routes(self) -> Dict[str, Route]:
        return self.httpd.routes  # type: ignore

    @property
    def release(self) -> threading.Event:
        return self.httpd.release  # type: ignore

    @property
    def stalled(self) -> threading.Event:
        return self.httpd.stalled  # type: ignore

    def url(self, path: str) -> str:
        return "{}://127.0.0.1:{}{}".format(self.scheme, self.httpd.server_address[1], path)

    def publish(self, path: str, body: bytes, **route: Any) -> str:
        self.routes[path] = Route(body, **route)
        return self.url(path)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


def publish_model(server: FileServer, version: str, seed: int) -> Dict[str, Any]:
    """Serve model and labels for tiny@version; returns the install arguments."""
    model = tiny_onnx_bytes(seed)
    url = server.publish("/tiny/{}/model.onnx".format(version), model)
    labels_url = server.publish("/tiny/{}/labels.txt".format(version), LABELS)
    return {"name": "tiny", "version": version, "url": url, "sha256": sha(model),
            "size": len(model), "manifest": tiny_manifest(), "labels_url": labels_url}
