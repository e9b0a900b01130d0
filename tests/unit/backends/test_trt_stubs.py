"""The TensorRT 10 surface: the double and our tensor-API code against `tensorrt-stubs`.

(a) Every public attribute the 10.x double exposes exists in the stubs, so tests cannot pass on
an API that TensorRT 10 does not have. (b) mypy type-checks agent/backends/tensorrt/io.py (the
I/O adapters) against the stubs. Skipped with a reason when the stubs or mypy are
missing. The stubs are found via $TENSORRT_STUBS_DIR, then .venv/trt-stubs (install with
`pip install --no-deps --target .venv/trt-stubs tensorrt-stubs`: installing them into
site-packages would make `import tensorrt` succeed as an empty namespace package), then
sys.path.

tensorrt-stubs 10.13.0.35.1 has a few lines Python cannot parse (a parameter named `in`,
defaults before non-defaults); `_parseable_stubs` repairs exactly those lines in a temporary
copy and reports how many it changed.
"""

import ast
import os
import re
import shutil
import subprocess
import sys

import pytest

from support.trt_helpers import NANO, ROOT, doubles, trt_double


def _stub_root():
    candidates = [os.environ.get("TENSORRT_STUBS_DIR"), os.path.join(ROOT, ".venv", "trt-stubs")]
    candidates += [p for p in sys.path if p]
    for folder in candidates:
        if folder and os.path.isfile(os.path.join(folder, "tensorrt_bindings", "tensorrt.pyi")):
            return folder
    return None


STUBS = _stub_root()
needs_stubs = pytest.mark.skipif(STUBS is None, reason="tensorrt-stubs not installed (pip install "
                                 "--no-deps --target .venv/trt-stubs tensorrt-stubs)")


def _repair(text):
    """Make the stub text parseable, changing only the lines Python rejects."""
    lines = text.split("\n")
    repaired = 0
    for _ in range(200):
        try:
            ast.parse("\n".join(lines))
            return "\n".join(lines), repaired
        except SyntaxError as exc:
            i = exc.lineno - 1
            old = lines[i]
            new = re.sub(r"\bin:", "in_:", old)
            if new == old:
                new = re.sub(r"\s*=\s*[^,()]+(?=[,)])", "", old)
            if new == old:
                raise
            lines[i] = new
            repaired += 1
    raise AssertionError("stubs still unparseable after 200 repairs")


@pytest.fixture(scope="module")
def parseable_stubs(tmp_path_factory):
    if STUBS is None:
        pytest.skip("tensorrt-stubs not installed")
    dest = str(tmp_path_factory.mktemp("trt-stubs"))
    total = 0
    for package in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(os.path.join(STUBS, package), os.path.join(dest, package))
        for name in os.listdir(os.path.join(dest, package)):
            if name.endswith(".pyi"):
                path = os.path.join(dest, package, name)
                text, repaired = _repair(open(path).read())
                total += repaired
                with open(path, "w") as handle:
                    handle.write(text)
    assert total < 20, "the stubs changed a lot ({} repairs): check _repair".format(total)
    return dest


def _stub_classes(folder):
    tree = ast.parse(open(os.path.join(folder, "tensorrt_bindings", "tensorrt.pyi")).read())
    classes = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members = set()
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    members.update(t.id for t in item.targets if isinstance(t, ast.Name))
                elif isinstance(item, ast.ClassDef):
                    members.add(item.name)
            classes[node.name] = (members, [ast.unparse(b) if hasattr(ast, "unparse") else
                                            getattr(b, "id", "") for b in node.bases])
    return classes


def _stub_members(classes, name):
    members, bases = classes[name]
    out = set(members)
    for base in bases:
        if base in classes:
            out |= _stub_members(classes, base)
    return out


def _module_all(folder):
    tree = ast.parse(open(os.path.join(folder, "tensorrt", "__init__.pyi")).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__"
                                                for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError("no __all__ in tensorrt/__init__.pyi")


def _double_surface(cls):
    """Public names the double defines for `cls` (its own classes only, not builtins)."""
    names = set()
    for klass in cls.__mro__:
        if klass.__module__ != trt_double.__name__:
            continue
        names.update(n for n in vars(klass) if not n.startswith("_"))
    return names


@needs_stubs
def test_every_attribute_of_the_10x_double_exists_in_the_stubs(parseable_stubs):
    classes = _stub_classes(parseable_stubs)
    exported = _module_all(parseable_stubs)
    with doubles("10.3", NANO) as trt:
        public = [n for n in vars(trt) if not n.startswith("_") and n != "KNOBS"]
        missing_module = sorted(n for n in public if n not in exported)
        assert not missing_module, "the double exports names TensorRT 10 lacks: {}".format(
            missing_module)
        problems = []
        checked = 0
        for name in public:
            value = getattr(trt, name)
            if not isinstance(value, type):
                continue
            assert name in classes, "class {} is not in the stubs".format(name)
            allowed = _stub_members(classes, name)
            for attr in sorted(_double_surface(value)):
                checked += 1
                if attr not in allowed:
                    problems.append("{}.{}".format(name, attr))
        assert checked > 60
        assert not problems, "attributes the TensorRT 10 stubs do not have: {}".format(problems)
        # The 10.x double must not offer what 10.0 removed.
        engine_cls, context_cls = trt.ICudaEngine, trt.IExecutionContext
        for gone in ("num_bindings", "get_binding_shape", "binding_is_input"):
            assert not hasattr(engine_cls, gone)
        assert not hasattr(context_cls, "execute_async_v2")
        assert not hasattr(trt.Builder, "build_engine")
        assert not hasattr(trt.IBuilderConfig, "max_workspace_size")


@needs_stubs
def test_stub_check_catches_an_attribute_tensorrt_10_lacks(parseable_stubs):
    classes = _stub_classes(parseable_stubs)
    assert "num_bindings" not in _stub_members(classes, "ICudaEngine")
    assert "execute_async_v3" in _stub_members(classes, "IExecutionContext")
    assert "set_memory_pool_limit" in _stub_members(classes, "IBuilderConfig")


def _mypy(parseable_stubs, target, tmp_path):
    try:
        import mypy  # noqa: F401
    except ImportError:
        pytest.skip("mypy is not installed (pip install mypy)")
    env = dict(os.environ, MYPYPATH=parseable_stubs)
    cmd = [sys.executable, "-m", "mypy", "--no-incremental", "--follow-imports=silent",
           "--ignore-missing-imports", "--cache-dir", str(tmp_path / "mypy-cache"),
           "--check-untyped-defs", target]
    out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True, env=env)
    # mypy exits 0 (clean) or 1 (errors, here mostly inside the stubs); 2 means it did not run.
    assert out.returncode in (0, 1) and ("Success:" in out.stdout or "Found " in out.stdout), \
        out.stdout[-2000:]
    return [ln for ln in out.stdout.splitlines() if ln.startswith(target + ":")]


@needs_stubs
def test_tensor_api_adapter_type_checks_against_tensorrt_10_stubs(parseable_stubs, tmp_path):
    target = os.path.join("agent", "backends", "tensorrt", "io.py")
    errors = _mypy(parseable_stubs, target, tmp_path)
    assert errors == []


@needs_stubs
def test_mypy_check_fails_on_binding_api_code(parseable_stubs, tmp_path):
    """Negative control: code using the removed binding API is reported."""
    bad = tmp_path / "uses_bindings.py"
    bad.write_text("import tensorrt as trt\n\n\n"
                   "def count(engine: trt.ICudaEngine) -> int:\n"
                   "    return engine.num_bindings\n")
    errors = _mypy(parseable_stubs, str(bad), tmp_path)
    assert any('"ICudaEngine" has no attribute "num_bindings"' in e for e in errors), errors


# ---------------------------------------------------------------------------------------------
# TensorRT 8.2 (JetPack 4.6) and 8.5 (JetPack 5.1): no stubs exist, so the surface is a list
# written from NVIDIA/TensorRT's python/src at those tags (tests/support/trt_surface.py).
# ---------------------------------------------------------------------------------------------
from support import trt_surface  # noqa: E402

_GENERATIONS = {"8.2": (trt_surface.SURFACE_82, trt_surface.MODULE_82, trt_surface.AGENT_USES_82),
                "8.5": (trt_surface.SURFACE_85, trt_surface.MODULE_85, trt_surface.AGENT_USES_85)}


@pytest.mark.parametrize("generation", sorted(_GENERATIONS))
def test_8x_double_exposes_exactly_the_real_8x_surface(generation):
    surface, module_names, _ = _GENERATIONS[generation]
    with doubles(generation, NANO) as trt:
        public = set(n for n in vars(trt) if not n.startswith("_") and n != "KNOBS")
        classes = set(n for n in public if isinstance(getattr(trt, n), type))
        assert classes == set(surface), "classes: extra {}, missing {}".format(
            sorted(classes - set(surface)), sorted(set(surface) - classes))
        assert public - classes == module_names
        problems = []
        for name in sorted(classes):
            have = _double_surface(getattr(trt, name))
            if have != surface[name]:
                problems.append("{}: not in {} {}, missing {}".format(
                    name, generation, sorted(have - surface[name]),
                    sorted(surface[name] - have)))
        assert not problems, problems


def test_8x_surface_lists_hold_nothing_from_later_tensorrt():
    s82, s85 = trt_surface.SURFACE_82, trt_surface.SURFACE_85
    later = {"ICudaEngine": {"num_io_tensors", "get_tensor_name"},
             "IExecutionContext": {"execute_async_v3", "set_tensor_address"},
             "IBuilderConfig": {"set_memory_pool_limit", "progress_monitor"}}
    for cls, names in later.items():
        assert not names & s82[cls], cls
    assert "MemoryPoolType" not in s82 and "TensorIOMode" not in s82
    assert "IProgressMonitor" not in s85 and "INT64" not in s85["DataType"]
    assert "TACTIC_DRAM" not in s85["MemoryPoolType"]


@pytest.mark.parametrize("generation", sorted(_GENERATIONS))
def test_what_the_agent_uses_is_in_the_8x_surface_and_in_its_code(generation):
    surface, module_names, uses = _GENERATIONS[generation]
    source = ""
    folder = os.path.join(ROOT, "agent", "backends", "tensorrt")
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(folder, name)) as handle:
            source += handle.read()
    for cls, names in uses.items():
        assert names <= surface[cls], (cls, sorted(names - surface[cls]))
        for name in names:
            used = ("." + name, '"{}"'.format(name), "def {}(".format(name))  # call, getattr, hook
            assert any(u in source for u in used), "{}.{} is listed but the agent does not use " \
                "it".format(cls, name)
    assert trt_surface.AGENT_MODULE <= module_names
