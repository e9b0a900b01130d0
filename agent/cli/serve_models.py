"""`edge-agent serve-models`: publish packages over HTTP(S) and print their model/install payloads.

Each package under DIR (a directory with model.yaml, as `edge-agent package` writes it) is
served at BASE/<its path under DIR>/, and its exact `model/install` payload is printed, one JSON
object per line: url, sha256, size, the manifest (model.yaml, which is the final manifest a
device signs over), labels_url, labels_sha256 and, when DIR/model.sig exists, signature. Give
the line to `edge-agent send model/install --device ID --json '...'`. With --base-url and
--print-only, the payloads name another server (e.g. an HTTPS host the files were copied to).
"""

import argparse
import http.server
import json
import os
import socket
import socketserver
import sys
from typing import Any, Dict, List

from ..errors import AgentError
from ..store.package import MANIFEST_NAME
from .keys import read_signature, signed_manifest

MAX_DEPTH = 3


def find_packages(root: str) -> List[str]:
    """Directories under `root` (itself included, at most MAX_DEPTH deep) holding model.yaml."""
    if not os.path.isdir(root):
        raise AgentError("serve-models: {} is not a directory".format(root))
    found = []
    base = root.rstrip(os.sep).count(os.sep)
    for path, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if path.count(os.sep) - base >= MAX_DEPTH:
            dirs[:] = []
        if MANIFEST_NAME in files:
            found.append(path)
    if not found:
        raise AgentError("serve-models: no package (a directory with {}) under {}; write one "
                         "with `edge-agent package`".format(MANIFEST_NAME, root))
    return sorted(found)


def install_payload(package_dir: str, root: str, base_url: str) -> Dict[str, Any]:
    """The model/install payload for the package in `package_dir`, served from `root` at
    `base_url`."""
    manifest = signed_manifest(package_dir)
    rel = os.path.relpath(package_dir, root).replace(os.sep, "/")
    prefix = base_url.rstrip("/") + "/" + ("" if rel == "." else _quote(rel) + "/")
    payload = {"name": manifest["name"], "version": manifest["version"],
               "url": prefix + _quote(manifest["file"]), "sha256": manifest["sha256"],
               "size": os.path.getsize(os.path.join(package_dir, manifest["file"])),
               "manifest": manifest}  # type: Dict[str, Any]
    if manifest.get("labels"):
        payload["labels_url"] = prefix + _quote(manifest["labels"])
        payload["labels_sha256"] = manifest["labels_sha256"]
    signature = read_signature(package_dir)
    if signature:
        payload["signature"] = signature
    return payload


def _quote(path: str) -> str:
    import urllib.parse
    return urllib.parse.quote(path)


def cmd_serve_models(args: argparse.Namespace) -> int:
    root = os.path.abspath(args.dir)
    packages = find_packages(root)
    httpd = None
    if not args.print_only:
        httpd = _Server((args.host, args.port), _handler_for(root))
        if args.cert:
            import ssl
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(args.cert, args.tls_key)
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    scheme = "https" if args.cert else "http"
    # Listening on every address: name this machine as the devices would look it up.
    host = socket.getfqdn() if args.host in ("", "0.0.0.0", "::") else args.host
    base = args.base_url or "{}://{}:{}".format(
        scheme, host, httpd.server_address[1] if httpd else args.port)
    for package_dir in packages:
        payload = install_payload(package_dir, root, base)
        print(json.dumps(payload, sort_keys=True))
    sys.stdout.flush()
    if httpd is None:
        return 0
    sys.stderr.write("serving {} at {} (Ctrl-C to stop); send a line above with: edge-agent "
                     "send model/install --device ID --json 'LINE'\n".format(root, base))
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def _handler_for(root: str) -> Any:
    """A request handler serving the files under `root` (and nothing outside it)."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path: str) -> str:
            # SimpleHTTPRequestHandler maps the URL onto the working directory; rebase it
            # onto `root` (its `directory` argument needs Python 3.7).
            relative = os.path.relpath(http.server.SimpleHTTPRequestHandler.translate_path(
                self, path), os.getcwd())
            return os.path.join(root, relative) if not relative.startswith("..") else root

        def log_message(self, fmt: str, *values: Any) -> None:
            sys.stderr.write("{} {}\n".format(self.address_string(), fmt % values))
    return Handler
