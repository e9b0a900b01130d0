"""model.yaml manifests: bad fields named, the bundled package verifies, labels."""

import pytest

from agent.errors import ModelError
from agent.store.package import ModelPackage
from support.manifests import manifest_dict
from support.paths import MODEL_DIR


@pytest.mark.parametrize("key, value, message", [
    ("name", "../x", "may only use letters"),
    ("version", "a/b", "may only use letters"),
    ("file", "../../etc/passwd", "plain file name"),
    ("input.shape", [1, 3, 224], "four positive integers"),
    ("input.shape", [1, 1, 8, 8], "3-channel"),
    ("input.std", [1, 0, 1], "must not contain 0"),
    ("input.shape", [1, 3, 100000, 100000], "asks for 10000000000 pixels per inference"),
    ("input.shape", [1, 3, 8, 5000], "over the limit of 16777216 (each side at most 4096)"),
    ("input.shape", [64, 3, 1024, 1024], "asks for 67108864 pixels per inference"),
    ("input.resize", {"mode": "shorter_side_crop", "size": 10 ** 6},
     "input.resize.size: 1000000 is over the limit of 8192"),
    ("input.resize", {"mode": "zoom"}, "'zoom' is not one of"),
    ("input.resize", {"mode": "shorter_side_crop", "size": 4}, "input.resize.size"),
    ("output", {"activation": "relu"}, "'relu' is not one of"),
    ("sha256", "abc", "not 64 hex digits"),
])
def test_bad_manifests_name_the_field(key, value, message):
    with pytest.raises(ModelError) as err:
        ModelPackage.from_dict("/tmp", manifest_dict(**{key: value}), "pkg/model.yaml")
    assert message in str(err.value) and "pkg/model.yaml" in str(err.value)


def test_bundled_package_verifies():
    pkg = ModelPackage.load(MODEL_DIR)
    assert pkg.verify() == pkg.sha256 and len(pkg.labels) == 1000


def test_labels_that_are_not_utf8_are_a_model_error(tmp_path):
    from agent.store.package import load_labels
    path = tmp_path / "labels.txt"
    path.write_bytes(b"\xef\xbb\xbfcat\r\ndog\n\xff\xfe\n")
    with pytest.raises(ModelError) as err:
        load_labels(str(path))
    assert "labels.txt: not UTF-8 text (byte 0xff on line 3); save it as UTF-8" in str(err.value)
    path.write_bytes(b"\xef\xbb\xbfcat\r\ndog\rcaf\xc3\xa9\n\n")
    assert load_labels(str(path)) == ["cat", "dog", "caf\u00e9"]
