"""Test support (on sys.path through pytest.ini's pythonpath): helpers of conftest.py,
helpers shared by test modules, the doubles, the ONNX reference runner."""
