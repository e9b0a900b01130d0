"""The retained `info` fingerprint read from Jetson files laid out in tmp_path."""

from agent.environment import cuda_version, fingerprint, l4t_release, nvpmodel_mode


def _write(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_jetson_nano_fingerprint(tmp_path):
    _write(tmp_path, "proc/device-tree/model", "NVIDIA Jetson Nano Developer Kit\x00")
    _write(tmp_path, "etc/nv_tegra_release",
           "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64\n")
    _write(tmp_path, "usr/local/cuda/version.txt", "CUDA Version 10.2.300\n")
    _write(tmp_path, "var/lib/nvpmodel/status", "pmode:0001\n")
    _write(tmp_path, "etc/nvpmodel.conf", "< POWER_MODEL ID=0 NAME=MAXN >\n"
                                          "< POWER_MODEL ID=1 NAME=5W >\n")
    info = fingerprint(str(tmp_path))
    assert info["board"] == "NVIDIA Jetson Nano Developer Kit"
    assert info["l4t"] == "R32.7.1"
    assert info["versions"]["cuda"] == "10.2.300"
    assert info["nvpmodel"] == {"id": 1, "name": "5W"}


def test_orin_cuda_json_and_missing_files(tmp_path):
    _write(tmp_path, "usr/local/cuda/version.json", '{"cuda": {"name": "CUDA SDK", '
                                                    '"version": "12.6.68"}}')
    assert cuda_version(str(tmp_path)) == "12.6.68"
    assert nvpmodel_mode(str(tmp_path)) is None
    assert l4t_release(str(tmp_path)) is None
