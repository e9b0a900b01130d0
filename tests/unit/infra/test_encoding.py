"""Text is read and written as UTF-8 whatever the locale (issue 11, 1.8).

Under LANG=C (l4t containers, cron, shells without LANG), Python 3.6 decodes text files as ASCII:
3.7+ coerce the C locale to UTF-8 (PEP 538/540), 3.6 does not, and 3.6 is the only Python with
TensorRT on a Jetson Nano/TX2. So the dynamic tests run on a Python 3.6 interpreter (the one
running the tests when it is 3.6, else pyenv's 3.6.15) and the static test makes sure no text
open() in agent/ or setup.py relies on the locale.
"""

import ast
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from support.paths import MODEL_DIR, ROOT

PYENV_36 = "/root/.pyenv/versions/3.6.15/bin/python"


# The JetPack 4.6 stack's venv (.ci/stacks; .ci/run makes it before the main suite) has the
# agent's dependencies on 3.6; pyenv's bare 3.6 has only the standard library.
JP46 = os.path.join(ROOT, ".venv-stacks", "jp46", "bin", "python")


def python36():
    if sys.version_info[:2] == (3, 6):
        return sys.executable
    for candidate in (JP46, PYENV_36):
        if os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no Python 3.6 here ({} absent): 3.7+ coerce the C locale to UTF-8, so only 3.6 "
                "shows the failure".format(PYENV_36))


def c_locale_env():
    """The environment of a shell without LANG: C locale, no PYTHONIOENCODING/PYTHONUTF8."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LC_") and k not in (
               "LANG", "LANGUAGE", "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONCOERCECLOCALE",
               "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["LANG"] = "C"
    env["LC_ALL"] = "C"
    return env


def run_c_locale(python, args, cwd, pythonpath=None):
    env = c_locale_env()
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([python] + args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=120)


def test_python36_really_decodes_as_ascii_under_lang_c(tmp_path):
    """The premise of the tests below: otherwise they could not fail."""
    proc = run_c_locale(python36(), ["-c", "import locale; print(locale.getpreferredencoding(False))"],
                        str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip() in ("ANSI_X3.4-1968", "ascii", "US-ASCII")


def test_setup_py_reads_the_utf8_readme_under_lang_c(tmp_path):
    with open(os.path.join(ROOT, "README.md"), "rb") as handle:
        readme = handle.read()
    assert any(b > 127 for b in readme), "README.md has no non-ASCII byte: the test has no teeth"
    proc = run_c_locale(python36(), [os.path.join(ROOT, "setup.py"), "--version"], str(tmp_path))
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")[-2000:]
    from agent import __version__
    assert proc.stdout.decode().strip().splitlines()[-1] == __version__


def test_model_package_and_config_with_utf8_text_load_under_lang_c(tmp_path):
    python = python36()
    probe = subprocess.run([python, "-c", "import yaml"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    if probe.returncode != 0:
        pytest.skip("{} has no PyYAML (the JetPack 4.6 stack installs it)".format(python))
    package = tmp_path / "pkg"
    shutil.copytree(MODEL_DIR, str(package))
    manifest = (package / "model.yaml").read_text(encoding="utf-8")
    (package / "model.yaml").write_bytes(
        ("# Modèle de démonstration — étiquettes en français\n" + manifest).encode("utf-8"))
    labels = (package / "labels.txt").read_text(encoding="utf-8").splitlines()
    labels[0] = "crème-brûlée"
    (package / "labels.txt").write_bytes(("\n".join(labels) + "\n").encode("utf-8"))
    config = tmp_path / "config.yaml"
    config.write_bytes("# Caméra du hall — réglages\nmodel: {name: efficientnet_lite0}\n"
                       .encode("utf-8"))
    script = textwrap.dedent("""
        import sys
        from agent.store.package import ModelPackage
        from agent.config import load_config
        package = ModelPackage.load(sys.argv[1])
        config = load_config(sys.argv[2], [])
        print(ascii(package.labels[0]), config.model.name)
        """)
    proc = run_c_locale(python, ["-c", script, str(package), str(config)], str(tmp_path),
                        pythonpath=ROOT)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")[-2000:]
    assert proc.stdout.decode().split() == [ascii("crème-brûlée"), "efficientnet_lite0"]


def unit_environment():
    """The Environment= assignments of systemd/edge-agent.service."""
    env = {}
    with open(os.path.join(ROOT, "systemd", "edge-agent.service"), encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("Environment="):
                for pair in line.strip()[len("Environment="):].split():
                    key, value = pair.split("=", 1)
                    env[key] = value
    return env


@pytest.mark.parametrize("with_unit_env", [True, False])
def test_the_service_logs_utf8_under_the_c_locale(tmp_path, with_unit_env):
    """A unit may start with no LANG. With the unit's Environment= the journal gets UTF-8; the
    case without it shows what it prevents (\\xNN escapes in the journal)."""
    script = textwrap.dedent("""
        import logging
        from agent.logs import configure_logging
        configure_logging("INFO", environ={"INVOCATION_ID": "x"})
        logging.getLogger("agent.test").warning("label: cr\\u00e8me-br\\u00fbl\\u00e9e")
        """)
    env = c_locale_env()
    env["PYTHONPATH"] = ROOT
    if with_unit_env:
        env.update(unit_environment())
    proc = subprocess.run([python36(), "-c", script], cwd=str(tmp_path), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert proc.returncode == 0
    if with_unit_env:
        assert proc.stderr == "<4>agent.test: label: crème-brûlée\n".encode("utf-8")
    else:
        # The premise: 3.6 writes stderr as ASCII under LANG=C, other characters escaped.
        assert proc.stderr == b"<4>agent.test: label: cr\\xe8me-br\\xfbl\\xe9e\n"


# A command printing a label, with a directory name from argv that Python 3.6 decoded with
# surrogateescape: the label must come out escaped and the name as its own bytes.
PRINTING_COMMAND = textwrap.dedent("""
    import sys
    from agent import __main__ as cli
    cli.COMMANDS["run"] = lambda args: print("top-1: cr\\u00e8me-br\\u00fbl\\u00e9e in",
                                             sys.argv[1]) or 0
    sys.exit(cli.main(["run"]))
    """)
LABEL = b"top-1: cr\\xe8me-br\\xfbl\\xe9e in "


def python36_with_numpy():
    python = python36()
    probe = subprocess.run([python, "-c", "import numpy"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    if probe.returncode != 0:
        pytest.skip("{} has no numpy (the JetPack 4.6 stack installs it)".format(python))
    return python


def test_a_command_printing_a_label_does_not_crash_on_python36_under_lang_c(tmp_path):
    """3.6 writes stdout as ASCII under LANG=C and raised UnicodeEncodeError at the first
    non-ASCII label (`package`'s top-5, `send`'s events, `fleet`'s table)."""
    proc = subprocess.run([python36_with_numpy(), "-c", PRINTING_COMMAND,
                           b"/data/mod\xc3\xa8les"],
                          cwd=str(tmp_path), env=dict(c_locale_env(), PYTHONPATH=ROOT),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")[-2000:]
    assert proc.stdout == LABEL + b"/data/mod\xc3\xa8les\n"


def test_an_ascii_stdout_by_choice_escapes_too(tmp_path):
    """stdout ASCII by choice (PYTHONIOENCODING=ascii): reconfigure() on 3.7+, a new wrapper
    on 3.6. 3.7+ decode argv as UTF-8 under the C locale: there the name is text, escaped."""
    proc = subprocess.run([sys.executable, "-c", PRINTING_COMMAND, b"/data/mod\xc3\xa8les"],
                          cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=dict(c_locale_env(), PYTHONPATH=ROOT, PYTHONIOENCODING="ascii"),
                          timeout=60)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")[-2000:]
    name = b"/data/mod\xc3\xa8les" if sys.version_info < (3, 7) else b"/data/mod\\xe8les"
    assert proc.stdout == LABEL + name + b"\n"


def test_a_utf8_stdout_is_left_as_it_is(tmp_path):
    proc = subprocess.run([sys.executable, "-c", PRINTING_COMMAND, "/data/models"],
                          cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=dict(c_locale_env(), PYTHONPATH=ROOT, PYTHONIOENCODING="utf-8"),
                          timeout=60)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")[-2000:]
    assert proc.stdout == "top-1: crème-brûlée in /data/models\n".encode("utf-8")


# --- static: every text open() names its encoding ---------------------------------------------


def _literal(node):
    """The value of a str/bool literal; None for anything else (a variable mode is suspect)."""
    kind = type(node).__name__
    if kind in ("Constant", "NameConstant"):  # NameConstant: True/False before Python 3.8
        return node.value
    if kind == "Str":  # Python 3.6/3.7
        return node.s
    return None


def text_opens_without_encoding(source, filename="<string>"):
    """Lines of `source` with a text-mode open()/io.open()/os.fdopen() and no encoding=, a
    subprocess call decoding text without encoding=, or Path.read_text/write_text without one."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else (
            func.attr if isinstance(func, ast.Attribute) else None)
        keywords = {k.arg: k.value for k in node.keywords}
        if "encoding" in keywords:
            continue
        if name == "open" and (isinstance(func, ast.Name) or (
                isinstance(func.value, ast.Name) and func.value.id in ("io", "codecs"))):
            mode_node = node.args[1] if len(node.args) > 1 else keywords.get("mode")
            mode = "r" if mode_node is None else _literal(mode_node)
            if mode is None or "b" not in mode:
                found.append(node.lineno)
        elif name == "fdopen":
            mode_node = node.args[1] if len(node.args) > 1 else keywords.get("mode")
            mode = "r" if mode_node is None else _literal(mode_node)
            if mode is None or "b" not in mode:
                found.append(node.lineno)
        elif name in ("read_text", "write_text"):
            found.append(node.lineno)
        elif name in ("run", "Popen", "check_output", "call", "check_call"):
            for key in ("universal_newlines", "text"):
                if key in keywords and _literal(keywords[key]) is not False:
                    found.append(node.lineno)
    return found


def agent_sources():
    paths = [os.path.join(ROOT, "setup.py")]
    for folder, _dirs, files in os.walk(os.path.join(ROOT, "agent")):
        paths.extend(os.path.join(folder, f) for f in files if f.endswith(".py"))
    return sorted(paths)


def test_no_text_open_in_agent_or_setup_relies_on_the_locale():
    offenders = []
    for path in agent_sources():
        with open(path, encoding="utf-8") as handle:
            source = handle.read()
        for line in text_opens_without_encoding(source, path):
            offenders.append("{}:{}".format(os.path.relpath(path, ROOT), line))
    assert offenders == [], "text I/O without encoding= (add encoding=\"utf-8\"): {}".format(
        ", ".join(offenders))


def test_the_static_check_finds_locale_dependent_text_io():
    source = textwrap.dedent("""
        import io, os, subprocess
        open(p)
        open(p, "w")
        open(p, mode)
        io.open(p, "rt")
        os.fdopen(fd, "w")
        path.read_text()
        subprocess.run(cmd, universal_newlines=True)
        open(p, "rb")
        open(p, "w", encoding="utf-8")
        os.open(p, os.O_RDONLY)
        subprocess.run(cmd, universal_newlines=True, encoding="utf-8")
        path.write_text(t, encoding="utf-8")
        """)
    assert text_opens_without_encoding(source) == [3, 4, 5, 6, 7, 8, 9]
