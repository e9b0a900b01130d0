"""Reading sysfs under a root path: attribute text and numbers, numbered files, unique names.

Readers pass `root` (tests: a tmp_path tree laid out like sysfs) and patterns relative to it.
"""

import glob
import os
import re
from typing import List, Set, Tuple


def under(root: str, relative: str) -> str:
    """`relative` (a sysfs path without the leading slash) inside `root`."""
    return os.path.join(root, relative)


def read_line(path: str) -> str:
    """A sysfs attribute's text; device-tree files end with NUL, which is dropped."""
    with open(path, "r", encoding="utf-8") as handle:
        return handle.read().replace("\x00", "").strip()


def read_number(path: str) -> float:
    """The first number in a sysfs attribute (some append units, e.g. '32760 ma')."""
    text = read_line(path)
    if not text:
        raise ValueError("{}: empty".format(path))
    return float(text.split()[0])


def claim_name(name: str, taken: Set[str], qualifier: str) -> str:
    """`name`, or `name@qualifier` where it is taken already; the result is added to `taken`."""
    if name in taken:
        name = "{}@{}".format(name, qualifier)
    taken.add(name)
    return name


def unique_dirs(root: str, pattern: str) -> List[str]:
    """The paths matching `pattern` under `root`, sorted, one per real path (sysfs links the
    same device under several names)."""
    out = []  # type: List[str]
    seen = set()  # type: Set[str]
    for path in sorted(glob.glob(under(root, pattern))):
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            out.append(path)
    return out


def numbered(pattern: str, regex: str) -> List[Tuple[int, str]]:
    """(N, path) of the files matching the glob `pattern` whose name matches `regex` (one
    group: the number N), in the order of N."""
    found = []  # type: List[Tuple[int, str]]
    for path in glob.glob(pattern):
        match = re.match(regex, os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)
