"""The model store on disk: packages, downloads, signatures, ONNX checks.

    package.py     a model package (model.yaml, the ONNX file, labels)
    store.py       ModelStore: installed versions, the active and previous one
    layout.py      the directory's file names, name checks, lock and crash-safe writes
    record.py      active.json
    install.py     adding versions: import a package directory, or download one
    manifest.py    the manifest an install writes; manifest_url
    signing.py     ed25519 signatures of manifests
    onnx_check.py  the ONNX file fits the manifest
    download.py    verified downloads (https, http, file)
"""
