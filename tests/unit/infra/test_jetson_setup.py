"""tools/jetson/setup.sh without a Jetson (issue 11, 1.5): the board's files live in a fake
root (--sysroot) and apt-get, sudo, pip3, python3, id and the venv's python/edge-agent are
stubs on PATH that record their calls, so the test checks what would run on a Nano, in which
order, with which arguments and environment, under LANG=C.

The stubs act like the real commands only as far as the script can tell: `python3 -m venv`
makes the venv's files, a pip install of pycuda or jetson-stats makes it importable afterwards.
"""

import os
import stat
import subprocess
import textwrap

import pytest

from support.paths import ROOT

SETUP = os.path.join(ROOT, "tools", "jetson", "setup.sh")

NANO_RELEASE = ("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, "
                "DATE: Sat Feb 19 17:05:08 UTC 2022\n")

# One stub for every command: logs "name<TAB>args<TAB>env" then acts by name.
STUB = textwrap.dedent(r"""
    #!/bin/bash
    name="$(basename "$0")"
    case "$0" in "$STUB_VENV"/bin/*) name="venv-$name" ;; esac
    printf '%s\t%s\tLANG=%s LC_ALL=%s CUDA_INC_DIR=%s CUDA_ROOT=%s PATH=%s\n' "$name" "$*" \
        "${LANG:-}" "${LC_ALL:-}" "${CUDA_INC_DIR:-}" "${CUDA_ROOT:-}" "$PATH" >> "$STUB_LOG"
    case "$name" in
        id) echo "$STUB_UID" ;;
        sudo) [ "$1" = "-H" ] && shift; exec "$@" ;;
        python3)
            case "$*" in
                *version_info*) echo "$STUB_PYTHON" ;;
                *"import tensorrt"*) exit 0 ;;
                *"import jtop"*) [ -e "$STUB_STATE/jtop" ]; exit $? ;;
                "-m venv --system-site-packages "*)
                    dir="${@: -1}"
                    mkdir -p "$dir/bin"
                    printf 'home = /usr/bin\ninclude-system-site-packages = true\n' > "$dir/pyvenv.cfg"
                    ln -s "$STUB_SELF" "$dir/bin/python"
                    ln -s "$STUB_SELF" "$dir/bin/edge-agent" ;;
                *) echo "python3 stub: unexpected $*" >&2; exit 2 ;;
            esac ;;
        pip3) case "$*" in *jetson-stats*) touch "$STUB_STATE/jtop" ;; esac ;;
        venv-python)
            case "$*" in
                *"import pycuda"*) [ -e "$STUB_STATE/pycuda" ]; exit $? ;;
                "-m pip install"*) case "$*" in *pycuda*) touch "$STUB_STATE/pycuda" ;; esac ;;
                *) echo "venv python stub: unexpected $*" >&2; exit 2 ;;
            esac ;;
        venv-edge-agent) exit "${STUB_CHECK_RC:-0}" ;;
        dpkg-query)
            case " $STUB_DPKG " in
                *" ${@: -1} "*) printf 'install ok installed' ;;
                *) exit 1 ;;
            esac ;;
    esac
    exit 0
    """).lstrip()


class Board(object):
    def __init__(self, tmp_path, release=NANO_RELEASE, cuda=True, python="3.6", uid=1000):
        self.root = tmp_path / "board"
        (self.root / "etc").mkdir(parents=True)
        if release is not None:
            (self.root / "etc" / "nv_tegra_release").write_text(release)
        (self.root / "proc" / "device-tree").mkdir(parents=True)
        (self.root / "proc" / "device-tree" / "model").write_bytes(
            b"NVIDIA Jetson Nano Developer Kit\x00")
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.stub = self.bin / "stub"
        self.stub.write_text(STUB)
        self.stub.chmod(0o755)
        for name in ("apt-get", "sudo", "pip3", "python3", "id", "dpkg-query"):
            os.symlink(str(self.stub), str(self.bin / name))
        if cuda:
            nvcc = self.root / "usr" / "local" / "cuda" / "bin" / "nvcc"
            nvcc.parent.mkdir(parents=True)
            os.symlink(str(self.stub), str(nvcc))
            (self.root / "usr" / "local" / "cuda" / "include").mkdir()
        self.state = tmp_path / "state"
        self.state.mkdir()
        self.log = tmp_path / "calls.log"
        self.venv = tmp_path / "home" / "nano" / "edge-agent-venv"
        self.python = python
        self.uid = uid

    def run(self, *args, **env_extra):
        env = {
            # A login without LANG (an l4t container, cron): the C locale, nothing UTF-8.
            "LANG": "C", "LC_ALL": "C",
            "HOME": str(self.venv.parent),
            "PATH": "{}:/usr/bin:/bin".format(self.bin),
            "STUB_LOG": str(self.log), "STUB_STATE": str(self.state),
            "STUB_SELF": str(self.stub), "STUB_VENV": str(self.venv),
            "STUB_PYTHON": self.python, "STUB_UID": str(self.uid),
            "STUB_DPKG": "libopencv libopencv-python nvidia-opencv",
        }
        env.update(env_extra)
        return subprocess.run(["bash", SETUP, "--sysroot", str(self.root)] + list(args),
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, encoding="ascii", timeout=60)

    def calls(self):
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            name, args, env = line.split("\t")
            out.append((name, args, env))
        return out


def commands(calls):
    """The calls that change something, as 'name args' (the probes left out)."""
    probes = ("id", "nvcc", "dpkg-query")
    out = []
    for name, args, _ in calls:
        if name in probes or (name in ("python3", "venv-python") and args.startswith("-c ")):
            continue
        out.append("{} {}".format(name, args).strip())
    return out


def env_of(calls, predicate):
    for name, args, env in calls:
        if predicate(name, args):
            return dict(part.split("=", 1) for part in env.split(" "))
    raise AssertionError("no such call")


def test_nano_setup_runs_every_step_in_order_under_lang_c(tmp_path):
    board = Board(tmp_path)
    result = board.run()
    assert result.returncode == 0, result.stderr
    assert "L4T R32.7.1 (JetPack 4.6)" in result.stdout
    venv = str(board.venv)
    assert commands(board.calls()) == [
        "sudo -H apt-get update",
        "apt-get update",
        "sudo -H apt-get install -y python3-venv python3-dev python3-pip python3-numpy "
        "python3-yaml build-essential mosquitto-clients",
        "apt-get install -y python3-venv python3-dev python3-pip python3-numpy python3-yaml "
        "build-essential mosquitto-clients",
        # jetson-stats system-wide, as its docs say: it refuses a venv.
        "sudo -H pip3 install -U jetson-stats",
        "pip3 install -U jetson-stats",
        "python3 -m venv --system-site-packages " + venv,
        "venv-python -m pip install -U pip<22 setuptools<60 wheel",
        "venv-python -m pip install --no-build-isolation pycuda<=2022.1",
        "venv-python -m pip install " + ROOT,
        "venv-edge-agent check -c " + os.path.join(ROOT, "config.yaml"),
    ]
    # Never Ubuntu's OpenCV 3.2 (no GStreamer, shadows JetPack's cv2), never pip OpenCV/numpy.
    everything = " ".join(commands(board.calls())).replace(str(tmp_path), "TMP")
    assert "opencv" not in everything and "numpy<" not in everything
    # pycuda compiles against /usr/local/cuda: nvcc on PATH and the include directory given.
    cuda = str(board.root / "usr" / "local" / "cuda")
    env = env_of(board.calls(), lambda n, a: n == "venv-python" and "pycuda<=" in a)
    assert env["PATH"].split(":")[0] == cuda + "/bin"
    assert env["CUDA_INC_DIR"] == cuda + "/include" and env["CUDA_ROOT"] == cuda
    # Every command ran in the C locale the script was started in.
    assert all("LANG=C LC_ALL=C" in e for _, _, e in board.calls())


def test_ubuntus_opencv_is_named_with_its_removal_and_jetpacks_missing_one_with_its_package(
        tmp_path):
    board = Board(tmp_path)
    result = board.run(STUB_DPKG="python3-opencv")
    assert result.returncode == 0, result.stderr
    assert "Ubuntu's python3-opencv is installed" in result.stderr
    assert "sudo apt-get remove python3-opencv" in result.stderr
    assert "sudo apt-get install nvidia-opencv" in result.stderr
    assert not any("python3-opencv" in c or "nvidia-opencv" in c  # warned, nothing changed
                   for c in commands(board.calls()))
    quiet = Board(tmp_path / "ok")
    assert "opencv" not in quiet.run().stderr.lower()


def test_running_it_again_skips_what_is_done(tmp_path):
    board = Board(tmp_path)
    assert board.run().returncode == 0
    board.log.unlink()
    again = board.run()
    assert again.returncode == 0, again.stderr
    done = commands(board.calls())
    assert not any("venv" in c and c.startswith("python3") for c in done)  # venv kept
    assert not any("jetson-stats" in c for c in done)  # jtop imports: not reinstalled
    assert not any("pycuda" in c for c in done)  # no 10-minute rebuild
    assert "venv-python -m pip install " + ROOT in done
    assert "virtual environment {} exists".format(board.venv) in again.stdout


def test_as_root_it_uses_no_sudo_and_no_jtop_skips_jetson_stats(tmp_path):
    board = Board(tmp_path, uid=0)
    result = board.run("--no-jtop", "--editable")
    assert result.returncode == 0, result.stderr
    done = commands(board.calls())
    assert not any(c.startswith("sudo") for c in done)
    assert not any("jetson-stats" in c for c in done)
    assert "venv-python -m pip install -e " + ROOT in done


def test_jetpack_5_gets_current_pycuda_and_pip(tmp_path):
    board = Board(tmp_path, release="# R35 (release), REVISION: 4.1, GCID: 33958178, "
                                    "BOARD: t186ref, EABI: aarch64\n", python="3.8")
    result = board.run()
    assert result.returncode == 0, result.stderr
    done = commands(board.calls())
    assert "venv-python -m pip install -U pip setuptools wheel" in done
    assert "venv-python -m pip install --no-build-isolation pycuda" in done


def test_a_failing_check_is_the_scripts_exit_code(tmp_path):
    board = Board(tmp_path)
    result = board.run(STUB_CHECK_RC="1")
    assert result.returncode == 1
    assert "edge-agent check reports FAIL lines" in result.stderr


@pytest.mark.parametrize("board_kw, message", [
    ({"release": None}, "not a Jetson: /etc/nv_tegra_release is missing "
                        "(model: NVIDIA Jetson Nano Developer Kit)"),
    ({"cuda": False}, "no CUDA at /usr/local/cuda (bin/nvcc missing)"),
    ({"release": "# R32 (release), REVISION: 4.4, GCID: 23942405\n"},
     "L4T R32.4.4 is older than JetPack 4.6 (L4T R32.6)"),
    ({"release": "# R28 (release), REVISION: 2.1\n"}, "L4T R28.2.1 is not a JetPack"),
    ({"release": "garbage\n"}, "cannot read the L4T release"),
])
def test_clear_errors_before_anything_is_installed(tmp_path, board_kw, message):
    board = Board(tmp_path, **board_kw)
    result = board.run()
    assert result.returncode == 1
    assert message in result.stderr
    assert result.stderr.count("\n") == 1  # one line
    assert commands(board.calls()) == []


def test_a_venv_without_system_site_packages_is_refused(tmp_path):
    board = Board(tmp_path)
    (board.venv / "bin").mkdir(parents=True)
    os.symlink(str(board.stub), str(board.venv / "bin" / "python"))
    (board.venv / "pyvenv.cfg").write_text("include-system-site-packages = false\n")
    result = board.run()
    assert result.returncode == 1
    assert "was made without --system-site-packages" in result.stderr
    assert not any(c.startswith("venv-python") for c in commands(board.calls()))


def test_setup_script_is_executable():
    assert os.stat(SETUP).st_mode & stat.S_IXUSR


def setup_py_arguments():
    """What setup.py hands to setuptools.setup(), without installing anything."""
    import setuptools
    captured = {}
    real = setuptools.setup
    setuptools.setup = lambda **kw: captured.update(kw)
    try:
        with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as handle:
            code = compile(handle.read(), os.path.join(ROOT, "setup.py"), "exec")
        exec(code, {"__file__": os.path.join(ROOT, "setup.py"), "__name__": "__main__"})
    finally:
        setuptools.setup = real
    return captured


def test_the_jetson_extra_pulls_no_jetson_stats_into_a_venv():
    jetson = setup_py_arguments()["extras_require"]["jetson"]
    assert not any(req.lower().startswith(("jetson-stats", "jetson_stats")) for req in jetson)
    assert "pycuda<=2022.1; python_version<'3.8'" in jetson
