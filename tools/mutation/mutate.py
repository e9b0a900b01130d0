"""A small mutation tester: mutate chosen functions of one module, run their unit tests, count.

Each mutant changes one AST node (a comparison, a boolean operator, a number, a call statement,
a return value, ...) inside the functions a target names; the module is rewritten with
ast.unparse in a private copy of the repository, the target's test files run there with
pytest -x, and the mutant is "killed" when they fail (or time out), "survived" when they pass.
Nothing in the worktree is touched.

    .venv/bin/python tools/mutation/mutate.py spool            # one target
    .venv/bin/python tools/mutation/mutate.py --list           # the targets
    .venv/bin/python tools/mutation/mutate.py spool --show 12  # print mutant 12's diff

Needs Python 3.9+ (ast.unparse); the agent's own code stays 3.6-compatible. See README.md.
"""

import argparse
import ast
import copy
import difflib
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name -> module file, the functions/classes to mutate ("Class", "Class.method", "func"),
# and the unit test files that are its runner (optionally a -k expression).
TARGETS = {
    "spool": {
        "module": "agent/spool.py",
        "only": ["_connect", "_move_aside", "Spool"],
        "tests": ["tests/unit/infra/test_spool.py", "tests/unit/infra/test_spool_edges.py"],
    },
    "atomicfile": {
        "module": "agent/atomicfile.py",
        "only": ["fsync_dir", "write_all", "atomic_file", "write_atomic", "copy_atomic"],
        "tests": ["tests/unit/store/test_atomicfile.py"],
    },
    "store": {
        "module": "agent/store/store.py",
        "only": ["ModelStore.active_ref", "ModelStore.previous_ref", "ModelStore.version_dir",
                 "ModelStore.get", "ModelStore.list", "ModelStore.activate",
                 "ModelStore.rollback", "ModelStore.remove", "ModelStore.prune"],
        "tests": ["tests/unit/store/test_models_store.py", "tests/unit/store/test_atomicfile.py",
                  "tests/unit/store/test_store_edges.py"],
        # The crash-at-every-step test runs ~80 s (a subprocess killed at each step): too
        # slow for a runner of ~90 mutants; the recorded-protocol tests stand in for it.
        "k": "not crash_at_every_rename",
    },
    "store-layout": {
        "module": "agent/store/layout.py",
        "only": ["check_component", "remove_leftovers"],
        "tests": ["tests/unit/store/test_models_store.py", "tests/unit/store/test_store_edges.py"],
        "k": "not crash_at_every_rename",
    },
    "store-record": {
        "module": "agent/store/record.py",
        "only": ["ActiveRecord"],
        "tests": ["tests/unit/store/test_models_store.py", "tests/unit/store/test_atomicfile.py",
                  "tests/unit/store/test_store_edges.py"],
        "k": "not crash_at_every_rename",
    },
    "commands": {
        "module": "agent/updates/commands.py",
        "only": ["_short", "_check_url", "_check_field", "parse_command", "_refuse_constant"],
        "tests": ["tests/unit/updates/test_commands.py", "tests/unit/updates/test_command_parser.py"],
        "k": "parse or malformed or replayed",
    },
    "probation": {
        "module": "agent/updates/probation.py",
        "only": ["Probation", "ProbationWatch"],
        "tests": ["tests/unit/updates/test_probation.py"],
    },
}

SWAPS = {
    ast.Eq: [ast.NotEq], ast.NotEq: [ast.Eq], ast.Lt: [ast.LtE, ast.GtE],
    ast.LtE: [ast.Lt, ast.Gt], ast.Gt: [ast.GtE, ast.LtE], ast.GtE: [ast.Gt, ast.Lt],
    ast.Is: [ast.IsNot], ast.IsNot: [ast.Is], ast.In: [ast.NotIn], ast.NotIn: [ast.In],
}
BINOPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
          ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv}
LOGGERS = ("log", "logger", "logging")

Mutation = Tuple[int, str, Callable[[ast.AST, ast.AST], Optional[ast.AST]]]


def _is_log_call(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id in LOGGERS)


def _children(node: ast.AST) -> List[ast.AST]:
    """Child nodes worth mutating: no annotations, decorators, docstrings or log calls."""
    out = []
    for field, value in ast.iter_fields(node):
        if field in ("annotation", "returns", "decorator_list", "type_comment"):
            continue
        values = value if isinstance(value, list) else [value]
        for i, child in enumerate(values):
            if not isinstance(child, ast.AST):
                continue
            if (field == "body" and i == 0 and isinstance(child, ast.Expr)
                    and isinstance(child.value, ast.Constant)
                    and isinstance(child.value.value, str)):
                continue  # docstring
            if isinstance(child, ast.Expr) and _is_log_call(child.value):
                continue
            if isinstance(child, ast.arguments):
                continue  # defaults of parameters are part of the API, not the logic
            out.append(child)
    return out


def _walk(node: ast.AST) -> List[ast.AST]:
    out = [node]
    for child in _children(node):
        out.extend(_walk(child))
    return out


def _find(tree: ast.Module, qualname: str) -> ast.AST:
    scope = tree.body  # type: List[ast.stmt]
    found = None  # type: Optional[ast.AST]
    for part in qualname.split("."):
        found = next((n for n in scope if isinstance(n, (ast.FunctionDef, ast.ClassDef,
                                                         ast.AsyncFunctionDef))
                      and n.name == part), None)
        if found is None:
            raise SystemExit("mutate: {} not found".format(qualname))
        scope = found.body
    return found


def _mutations_of(node: ast.AST, parent: ast.AST) -> List[Tuple[str, Callable[[ast.AST],
                                                                           Optional[ast.AST]]]]:
    """(description, apply) pairs; apply changes the node in place or returns a replacement."""
    out = []  # type: List[Tuple[str, Callable[[ast.AST], Optional[ast.AST]]]]
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        for new in SWAPS.get(type(node.ops[0]), []):
            def apply(n, new=new):
                n.ops = [new()]
            out.append(("{} -> {}".format(type(node.ops[0]).__name__, new.__name__), apply))
    elif isinstance(node, ast.BoolOp):
        new_op = ast.Or if isinstance(node.op, ast.And) else ast.And
        out.append(("{} -> {}".format(type(node.op).__name__, new_op.__name__),
                    lambda n, new_op=new_op: setattr(n, "op", new_op())))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        out.append(("drop 'not'", lambda n: n.operand))
    elif isinstance(node, ast.Constant) and not isinstance(parent, ast.JoinedStr):
        value = node.value
        if isinstance(value, bool):
            out.append(("{} -> {}".format(value, not value),
                        lambda n: setattr(n, "value", not n.value)))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(("{!r} -> {!r}".format(value, value + 1),
                        lambda n: setattr(n, "value", n.value + 1)))
    elif isinstance(node, ast.BinOp) and type(node.op) in BINOPS:
        new_op = BINOPS[type(node.op)]
        out.append(("{} -> {}".format(type(node.op).__name__, new_op.__name__),
                    lambda n, new_op=new_op: setattr(n, "op", new_op())))
    elif isinstance(node, ast.AugAssign) and type(node.op) in (ast.Add, ast.Sub):
        new_op = ast.Sub if isinstance(node.op, ast.Add) else ast.Add
        out.append(("{}= -> {}=".format(type(node.op).__name__, new_op.__name__),
                    lambda n, new_op=new_op: setattr(n, "op", new_op())))
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        out.append(("delete call statement", lambda n: ast.Pass()))
    elif isinstance(node, ast.Return) and node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None):
        out.append(("return None", lambda n: setattr(n, "value", None)))
    elif isinstance(node, ast.Break):
        out.append(("break -> continue", lambda n: ast.Continue()))
    elif isinstance(node, ast.Continue):
        out.append(("continue -> break", lambda n: ast.Break()))
    elif isinstance(node, ast.If) and not isinstance(node.test, (ast.Compare, ast.BoolOp,
                                                                 ast.UnaryOp)):
        out.append(("negate if condition",
                    lambda n: setattr(n, "test", ast.UnaryOp(ast.Not(), n.test))))
    return out


def enumerate_mutants(source: str, only: List[str]) -> List[Dict[str, Any]]:
    tree = ast.parse(source)
    mutants = []
    for qualname in only:
        target = _find(tree, qualname)
        nodes = _walk(target)
        parents = {}  # type: Dict[int, ast.AST]
        for n in nodes:
            for c in _children(n):
                parents[id(c)] = n
        for index, node in enumerate(nodes):
            for variant, (desc, _) in enumerate(_mutations_of(node, parents.get(id(node),
                                                                               target))):
                mutants.append({"target": qualname, "node": index, "variant": variant,
                                "line": getattr(node, "lineno", 0), "what": desc,
                                "code": (ast.get_source_segment(source, node) or "")
                                .split("\n")[0][:70]})
    return mutants


def apply_mutant(source: str, mutant: Dict[str, Any]) -> str:
    tree = ast.parse(source)
    target = _find(tree, mutant["target"])
    nodes = _walk(target)
    node = nodes[mutant["node"]]
    parent = None
    for n in nodes:
        if node in _children(n):
            parent = n
            break
    _, apply = _mutations_of(node, parent or target)[mutant["variant"]]
    replacement = apply(node)
    if replacement is not None and replacement is not node:
        ast.copy_location(replacement, node)
        _replace(parent, node, replacement)
    ast.fix_missing_locations(tree)
    return ast.unparse(tree) + "\n"


def _replace(parent: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for field, value in ast.iter_fields(parent):
        if isinstance(value, list):
            for i, child in enumerate(value):
                if child is old:
                    value[i] = new
                    return
        elif value is old:
            setattr(parent, field, new)
            return
    raise RuntimeError("mutate: node not found in its parent")


def copy_repo(dest: str) -> None:
    if os.path.exists(dest):
        shutil.rmtree(dest)
    ignore = shutil.ignore_patterns(".git", ".venv", ".hypothesis", "__pycache__",
                                    ".pytest_cache", "*.pyc")
    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)


def run_tests(workdir: str, target: Dict[str, Any], timeout: float) -> Tuple[str, float]:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
           "-p", "no:randomly", "-o", "addopts="] + target["tests"]
    if target.get("k"):
        cmd += ["-k", target["k"]]
    env = dict(os.environ)
    env["PYTHONPATH"] = workdir
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - start
    took = time.monotonic() - start
    if proc.returncode == 0:
        return "survived", took
    if proc.returncode in (1, 2, 3):
        return "killed", took
    return "error rc {}: {}".format(proc.returncode, proc.stdout.decode()[-300:]), took


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("target", nargs="?", choices=sorted(TARGETS))
    parser.add_argument("--list", action="store_true", help="list targets and mutant counts")
    parser.add_argument("--show", type=int, help="print the diff of mutant N and exit")
    parser.add_argument("--workdir", default=os.path.join(
        os.environ.get("TMPDIR", "/tmp"), "edge-agent-mutation"))
    parser.add_argument("--timeout-factor", type=float, default=4.0)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--ids", help="run only these mutants (comma-separated numbers)")
    args = parser.parse_args(argv)

    if args.list:
        for name in sorted(TARGETS):
            t = TARGETS[name]
            with open(os.path.join(ROOT, t["module"])) as handle:
                count = len(enumerate_mutants(handle.read(), t["only"]))
            print("{:<11} {:>4} mutants  {}  tests: {}".format(name, count, t["module"],
                                                              " ".join(t["tests"])))
        return 0
    if not args.target:
        parser.error("name a target (or --list)")
    target = TARGETS[args.target]
    with open(os.path.join(ROOT, target["module"])) as handle:
        source = handle.read()
    mutants = enumerate_mutants(source, target["only"])
    if args.show is not None:
        m = mutants[args.show]
        mutated = apply_mutant(source, m)
        plain = ast.unparse(ast.parse(source)) + "\n"
        sys.stdout.writelines(difflib.unified_diff(plain.splitlines(True),
                                                   mutated.splitlines(True),
                                                   target["module"], "mutant"))
        return 0

    workdir = os.path.join(args.workdir, args.target)
    copy_repo(workdir)
    module_path = os.path.join(workdir, target["module"])
    # The baseline runs the unparsed (comment-free) source too, so only the mutation differs.
    with open(module_path, "w") as handle:
        handle.write(ast.unparse(ast.parse(source)) + "\n")
    state, took = run_tests(workdir, target, timeout=1800)
    if state != "survived":
        print("baseline: the tests do not pass on the unmutated code ({})".format(state))
        return 2
    timeout = max(30.0, took * args.timeout_factor)
    print("{}: {} mutants in {}; baseline {:.1f} s".format(args.target, len(mutants),
                                                         target["module"], took))
    results = []
    wanted = set(int(x) for x in args.ids.split(",")) if args.ids else None
    for i, m in enumerate(mutants):
        if wanted is not None and i not in wanted:
            continue
        with open(module_path, "w") as handle:
            handle.write(apply_mutant(source, m))
        state, took = run_tests(workdir, target, timeout)
        m = dict(m, id=i, result=state, seconds=round(took, 1))
        results.append(m)
        print("{:>4} {:<9} {:.1f}s  {}:{} {} [{}]".format(
            i, state.split(":")[0], took, m["target"], m["line"], m["what"], m["code"]),
            flush=True)
    with open(module_path, "w") as handle:
        handle.write(source)
    counts = {}  # type: Dict[str, int]
    for r in results:
        key = r["result"].split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    print("{}: {} mutants run, {} killed ({} by timeout), {} survived, {} errors; score {:.0f} %"
          .format(args.target, len(results), killed, counts.get("timeout", 0),
                  counts.get("survived", 0),
                  len(results) - killed - counts.get("survived", 0),
                  100.0 * killed / max(1, len(results))))
    for r in results:
        if r["result"] == "survived":
            print("  survived #{} {}:{} {} [{}]".format(r["id"], r["target"], r["line"],
                                                       r["what"], r["code"]))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
