"""SIGHUP: re-read the config file, apply the keys that can change live, name the rest.

A config that cannot be loaded leaves the running one in place and is reported as a
`reload` failed event; the agent keeps serving.
"""

import logging
from typing import Any, Callable, Dict, List

from .config import Config, load_config
from .errors import AgentError
from .redact import redact_text

log = logging.getLogger("edge-agent")

# Keys a running agent applies on SIGHUP; any other change needs a restart.
LIVE_KEYS = ("logging.level", "predictions.top_k", "predictions.min_score",
             "predictions.max_rate_hz")


def reload_config(config: Config, overrides: List[str], model: Any,
                  emit: Callable[[Dict[str, Any]], None]) -> List[str]:
    """Apply the file's live keys to `config` (and `model`'s classifier, when one serves);
    the changed keys, [] when the file could not be loaded."""
    path = config.source_path
    try:
        new = load_config(path, overrides)
    except Exception as exc:  # whatever is wrong with the file, the agent keeps serving
        error = str(exc) if isinstance(exc, AgentError) else \
            "config file {}: cannot be loaded: {}: {}".format(path, type(exc).__name__, exc)
        error = redact_text(error)
        log.error("reload: keeping the running config: %s", error)
        emit({"command": "reload", "state": "failed", "error": error})
        return []
    old_flat, new_flat = _flatten(config.to_dict()), _flatten(new.to_dict())
    changed = sorted(k for k in set(old_flat) | set(new_flat)
                     if old_flat.get(k) != new_flat.get(k))
    live = [k for k in changed if k in LIVE_KEYS]
    restart = [k for k in changed if k not in LIVE_KEYS]
    if "logging.level" in live:
        logging.getLogger().setLevel(new.logging.level)
    config.predictions = new.predictions
    config.logging = new.logging
    if model is not None:
        model.classifier.top_k = new.predictions.top_k
        model.classifier.min_score = new.predictions.min_score
    detail = "applied: {}".format(", ".join(live) or "nothing changed")
    if restart:
        detail += "; need a restart: {}".format(", ".join(restart))
        log.warning("reload: these changed keys take effect only after a restart: %s",
                    ", ".join(restart))
    log.info("reload: %s", detail)
    emit({"command": "reload", "state": "done", "detail": detail})
    return changed


def _flatten(data: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}  # type: Dict[str, Any]
    for key, value in data.items():
        path = "{}.{}".format(prefix, key) if prefix else key
        if isinstance(value, dict):
            out.update(_flatten(value, path))
        else:
            out[path] = value
    return out
