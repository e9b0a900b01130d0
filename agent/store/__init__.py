"""The model store on disk: packages, downloads, signatures, ONNX checks."""
