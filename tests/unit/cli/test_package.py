"""The operator toolkit's `package`, `keys generate` and `verify`, through the real CLI (a
subprocess), on the bundled EfficientNet-Lite0 and on small ONNX graphs built here."""

import os
import shutil

import pytest

from support.agent_process import AgentProcess
from support.paths import MODEL_DIR, ROOT, SAMPLES
from support.strict import requires

LABELS = os.path.join(MODEL_DIR, "labels.txt")
ONNX = os.path.join(MODEL_DIR, "model.onnx")
CAT = os.path.join(SAMPLES, "cat.jpg")


def toolkit(*args, cwd=ROOT):
    proc = AgentProcess([str(a) for a in args], cwd=str(cwd))
    code = proc.wait(120)
    return code, proc.stdout.decode(errors="replace"), proc.err


def tiny_onnx(path, opset=13, hardswish=False, softmax=True, batch="N", classes=4):
    """NHWC float input [batch, 8, 8, 3] -> Transpose -> GlobalAveragePool -> Gemm (-> Softmax)."""
    onnx = requires("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.RandomState(0)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2])]
    last = "t"
    if hardswish:
        nodes.append(helper.make_node("HardSwish", ["t"], ["h"]))
        last = "h"
    nodes += [helper.make_node("GlobalAveragePool", [last], ["p"]),
              helper.make_node("Flatten", ["p"], ["f"]),
              helper.make_node("Gemm", ["f", "w", "b"], ["logits" if not softmax else "g"])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["g"], ["probs"], axis=1))
    out = "probs" if softmax else "logits"
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8, 8, 3])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, classes])],
        [numpy_helper.from_array(rng.randn(3, classes).astype(np.float32), "w"),
         numpy_helper.from_array(rng.randn(classes).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def top1(stdout, image):
    """The top-1 label printed for `image` ("cat.jpg: Egyptian cat 0.389, tabby ...")."""
    line = [x for x in stdout.splitlines() if x.startswith(image + ": ")][0]
    return line.split(": ", 1)[1].split(",")[0].rsplit(" ", 1)[0]


def write_labels(path, n):
    path.write_text("".join("class{}\n".format(i) for i in range(n)))
    return str(path)


def test_package_of_the_bundled_model_matches_its_hand_written_manifest(tmp_path):
    requires("onnxruntime")
    from agent.store.package import ModelPackage
    out = tmp_path / "pkg"
    code, stdout, err = toolkit("package", ONNX, "--labels", LABELS, "--name", "effl0",
                                "--version", "2", "--preset", "lite", "--out", out)
    assert code == 0, err + stdout
    made, bundled = ModelPackage.load(str(out)), ModelPackage.load(MODEL_DIR)
    assert made.ref == "effl0@2" and made.sha256 == bundled.sha256
    assert made.input.to_dict() == bundled.input.to_dict()
    assert made.output.to_dict() == bundled.output.to_dict()
    assert made.labels == bundled.labels and made.raw["labels_sha256"]
    assert "install check: passed" in stdout
    assert "TensorRT 8.2 preflight (JetPack 4.6, Jetson Nano): nothing known" in stdout
    assert top1(stdout, "cat.jpg") == "Egyptian cat", stdout
    assert "coffee.jpg: espresso" in stdout


def test_a_wrong_normalisation_shows_in_the_printed_top5(tmp_path):
    requires("onnxruntime")
    code, stdout, err = toolkit("package", ONNX, "--labels", LABELS, "--name", "effl0",
                                "--version", "2", "--preset", "raw", "--out", tmp_path / "p",
                                "--sample", CAT)
    assert code == 0, err
    assert "cat" not in top1(stdout, "cat.jpg"), stdout  # pixels 0..255 for a -1..1 model


def test_graph_facts_fill_the_manifest_nhwc_dynamic_batch_softmax(tmp_path):
    requires("onnxruntime")
    from agent.store.package import ModelPackage
    model = tiny_onnx(tmp_path / "tiny.onnx")
    code, stdout, err = toolkit("package", model, "--labels", write_labels(tmp_path / "l", 4),
                                "--name", "tiny", "--version", "1", "--preset", "unit",
                                "--out", tmp_path / "pkg", "--sample", CAT)
    assert code == 0, err + stdout
    package = ModelPackage.load(str(tmp_path / "pkg"))
    assert package.input.shape == [1, 8, 8, 3] and package.input.layout == "NHWC"
    assert package.input.name == "x" and package.output.name == "probs"
    assert package.output.activation == "none"  # the graph ends in Softmax
    assert "dynamic batch 'N' fixed to 1" in stdout
    assert "comes from a Softmax node: activation none" in stdout
    assert "cat.jpg: class" in stdout


def test_what_tensorrt_8_2_refuses_is_named_and_strict_fails(tmp_path):
    requires("onnxruntime")
    model = tiny_onnx(tmp_path / "hs.onnx", opset=14, hardswish=True)
    args = ["package", model, "--labels", write_labels(tmp_path / "l", 4), "--name", "hs",
            "--version", "1", "--preset", "unit", "--sample", CAT]
    code, stdout, err = toolkit(*(args + ["--out", tmp_path / "a"]))
    assert code == 0, err
    assert "TensorRT 8.2 (JetPack 4.6, Jetson Nano) would refuse this model:" in stdout
    assert "opset 14 is newer than TensorRT 8.2 supports" in stdout
    assert "operator HardSwish is not supported by TensorRT 8.2" in stdout
    code, stdout, err = toolkit(*(args + ["--out", tmp_path / "b", "--strict"]))
    assert code == 1 and "--strict: refused" in stdout


@pytest.mark.parametrize("case, expected", [
    ("not-onnx", "is not an ONNX model"),
    ("missing", "no such file; give the .onnx file"),
    ("labels", "has 999 labels but output 'logits' has 1000 classes"),
    ("mean", "--mean: 2 values given; give three numbers, one per channel"),
    ("std", "--std: 4 values given; give three numbers"),
    ("no-preset", "the graph does not say how pixels are normalised: give --preset"),
    ("name", "--name: 'a/b'"),
    ("exists", "exists and is not empty; give another --out, or --force"),
])
def test_bad_input_is_refused_with_the_fix(tmp_path, case, expected):
    requires("onnx")
    model, labels = ONNX, LABELS
    extra = ["--preset", "lite"]
    name = "m"
    if case == "not-onnx":
        model = str(tmp_path / "model.onnx")
        with open(model, "w") as handle:
            handle.write("this is a text file, not a model\n" * 20)
    elif case == "missing":
        model = str(tmp_path / "nothing.onnx")
    elif case == "labels":
        labels = write_labels(tmp_path / "labels.txt", 999)
    elif case == "mean":
        extra += ["--mean", "1", "2"]
    elif case == "std":
        extra += ["--std", "1", "2", "3", "4"]
    elif case == "no-preset":
        extra = ["--mean", "0", "0", "0"]
    elif case == "name":
        name = "a/b"
    elif case == "exists":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "keep.txt").write_text("x")
    code, stdout, err = toolkit("package", model, "--labels", labels, "--name", name,
                                "--version", "1", "--out", tmp_path / "out", *extra)
    assert code == 2, (code, stdout, err)
    assert expected in err, err
    assert "Traceback" not in err
    if case != "exists":
        assert not (tmp_path / "out" / "model.yaml").exists()


def test_keys_sign_verify_and_what_verify_catches(tmp_path):
    requires("cryptography")
    requires("onnxruntime")
    code, stdout, err = toolkit("keys", "generate", "--out", "signer", cwd=tmp_path)
    assert code == 0, err
    assert oct(os.stat(str(tmp_path / "signer.key")).st_mode & 0o777) == "0o600"
    code, _, err = toolkit("keys", "generate", "--out", "signer", cwd=tmp_path)
    assert code == 2 and "keys are never overwritten" in err
    toolkit("keys", "generate", "--out", "other", cwd=tmp_path)
    pkg = tmp_path / "pkg"
    code, stdout, err = toolkit("package", ONNX, "--labels", LABELS, "--name", "effl0",
                                "--version", "3", "--preset", "lite", "--out", pkg,
                                "--sample", CAT, "--sign", tmp_path / "signer.key")
    assert code == 0, err
    assert (pkg / "model.sig").is_file()
    code, stdout, err = toolkit("verify", pkg, "--key", tmp_path / "signer.pub")
    assert code == 0 and "signature: valid" in stdout and stdout.endswith("OK\n"), stdout
    # The signature is the one the agent checks: over the final manifest of an install.
    from agent.cli.keys import read_signature, signed_manifest
    from agent.store.signing import SignatureError, verify_manifest_signature
    verify_manifest_signature(signed_manifest(str(pkg)), read_signature(str(pkg)),
                              str(tmp_path / "signer.pub"))
    with pytest.raises(SignatureError):
        verify_manifest_signature(signed_manifest(str(pkg)), read_signature(str(pkg)),
                                  str(tmp_path / "other.pub"))
    code, stdout, _ = toolkit("verify", pkg, "--key", tmp_path / "other.pub")
    assert code == 1 and "signed with another key" in stdout
    # Changed labels: the hash no longer matches.
    shutil.copy(str(pkg / "labels.txt"), str(tmp_path / "labels.bak"))
    with open(str(pkg / "labels.txt"), "a") as handle:
        handle.write("extra\n")
    code, stdout, _ = toolkit("verify", pkg)
    assert code == 1 and "labels_sha256 says" in stdout, stdout
    shutil.copy(str(tmp_path / "labels.bak"), str(pkg / "labels.txt"))
    # A changed manifest (another normalisation) no longer verifies against the signature.
    text = (pkg / "model.yaml").read_text().replace("127.0, 127.0, 127.0", "0.0, 0.0, 0.0")
    (pkg / "model.yaml").write_text(text)
    code, stdout, _ = toolkit("verify", pkg, "--key", tmp_path / "signer.pub")
    assert code == 1 and "does not verify" in stdout, stdout
    os.unlink(str(pkg / "model.sig"))
    code, stdout, _ = toolkit("verify", pkg, "--key", tmp_path / "signer.pub")
    assert code == 1 and "unsigned" in stdout, stdout


def test_every_toolkit_command_has_help():
    for args in (["package"], ["keys", "generate"], ["verify"], ["serve-models"],
                 ["convert"]):
        code, stdout, err = toolkit(*(args + ["--help"]))
        assert code == 0 and "usage: edge-agent " + args[0] in stdout, err
