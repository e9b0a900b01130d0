"""active.json: the record of which installed version is active and which is previous."""

import errno
import json
import logging
import os
import time
from typing import Dict, Optional, Tuple

from ..atomicfile import fsync_dir
from .layout import RECORD_NAME, StoreError, check_component, write_atomic

log = logging.getLogger(__name__)

Ref = Tuple[str, str]  # (name, version)


class ActiveRecord(object):
    """Reads and replaces `root/active.json`; callers hold the store lock."""

    def __init__(self, root: str) -> None:
        self.path = os.path.join(root, RECORD_NAME)

    def read(self) -> Dict[str, Optional[Ref]]:
        """{"active": ref or None, "previous": ref or None}; StoreError when unreadable."""
        path = self.path
        try:
            with open(path, "rb") as handle:
                raw = json.loads(handle.read().decode("utf-8"))
        except (OSError, IOError) as exc:
            if getattr(exc, "errno", None) == errno.ENOENT:
                return {"active": None, "previous": None}
            raise StoreError("model store: cannot read {}: {}".format(path, exc))
        except ValueError as exc:
            raise StoreError("model store: {} is not valid JSON ({})".format(path, exc))
        out = {}  # type: Dict[str, Optional[Ref]]
        if not isinstance(raw, dict):
            raise StoreError("model store: {} is not a JSON object".format(path))
        for key in ("active", "previous"):
            value = raw.get(key)
            if value is None:
                out[key] = None
                continue
            try:
                out[key] = (check_component("name", value["name"]),
                            check_component("version", value["version"]))
            except (TypeError, KeyError, StoreError):
                raise StoreError("model store: {}: {} {!r} is not {{name, version}}".format(
                    path, key, value))
        return out

    def write(self, active: Optional[Ref], previous: Optional[Ref]) -> None:
        """Replace the record atomically and durably."""
        def ref(value: Optional[Ref]) -> Optional[Dict[str, str]]:
            return {"name": value[0], "version": value[1]} if value else None
        data = json.dumps({"active": ref(active), "previous": ref(previous),
                           "updated_at": round(time.time(), 3)}, indent=2, sort_keys=True)
        write_atomic(self.path, (data + "\n").encode("utf-8"))

    def set_aside_if_bad(self) -> None:
        """A record that cannot be read (disk damage, hand edits) is kept aside, not trusted."""
        try:
            self.read()
        except StoreError as exc:
            root = os.path.dirname(self.path)
            aside = os.path.join(root, ".bad-{}-{}".format(int(time.time()), RECORD_NAME))
            os.rename(self.path, aside)
            fsync_dir(root)
            log.warning("%s; moved it to %s, no model is active now", exc, aside)
