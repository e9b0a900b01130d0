"""A staged rollout with performance gates: a canary stage, then batches; each device's install
is followed to its `activated` event and its telemetry watched for a window; failures beyond a
threshold, or a regression of inference p50, end-to-end p99 or inferences per joule against
the same device's figures before, stop the rollout and roll back every device it changed."""

import time
from typing import Any, Callable, Dict, List, Optional

from . import state as st
from .state import RolloutState
from .watch import FleetWatch

Emit = Callable[[Dict[str, Any]], None]
# Telemetry figure -> True when a higher value is worse.
GATES = (("infer_p50_ms", True), ("e2e_p99_ms", True), ("inferences_per_joule", False))
FINAL_OK = ("activated",)
FINAL_BAD = ("failed", "rejected")
REPLAYED = "already received"  # the agent's answer to a request_id it has seen
BASELINE_WINDOWS = 3  # telemetry messages that make a device's figures before the update
RESEND_S = 15.0  # an install with no answer at all is sent again (same request_id) after this


def figures(telemetry: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """The gated figures of one telemetry message."""
    latency = telemetry.get("latency_ms") or {}
    return {"infer_p50_ms": (latency.get("infer") or {}).get("p50"),
            "e2e_p99_ms": (latency.get("end_to_end") or {}).get("p99"),
            "inferences_per_joule": (telemetry.get("energy") or {}).get("inferences_per_joule")}


def median_figures(messages: List[Dict[str, Any]]) -> Dict[str, Optional[float]]:
    out = {}  # type: Dict[str, Optional[float]]
    for key, _ in GATES:
        values = sorted(v for v in (figures(m)[key] for m in messages) if v is not None)
        out[key] = values[len(values) // 2] if values else None
    return out


def regressions(before: Dict[str, Any], after: Dict[str, Any], limit: float) -> List[str]:
    """What got worse by more than `limit` (0.2 = 20 %), e.g. 'infer_p50_ms 10.1 -> 31.0'."""
    found = []
    for key, higher_is_worse in GATES:
        old, new = before.get(key), after.get(key)
        if old is None or new is None or old <= 0:
            continue
        worse = new > old * (1 + limit) if higher_is_worse else new < old / (1 + limit)
        if worse:
            found.append("{} {:.3g} -> {:.3g}".format(key, old, new))
    return found


class Rollout(object):
    """Drives one RolloutState to an outcome over a connected FleetWatch."""

    def __init__(self, watch: FleetWatch, state: RolloutState, emit: Emit) -> None:
        self.watch = watch
        self.state = state
        self.emit = emit
        self.opt = state.doc["options"]
        self.target = state.doc["target"]
        self.started = time.monotonic()
        self.events = {}  # type: Dict[str, List[Dict[str, Any]]]  # request_id -> events
        self.telemetry = {}  # type: Dict[str, List[Dict[str, Any]]]  # device -> messages
        # What the rollout waits for now, for a progress display: {"what", "ends" (monotonic)}.
        self.phase = {"what": "starting", "ends": None}  # type: Dict[str, Any]
        self.on_phase = None  # type: Optional[Callable[[], None]]  # called at each change
        watch.listeners.append(self._collect)

    def _phase(self, what: str, seconds: Optional[float] = None) -> None:
        self.phase = {"what": what,
                      "ends": time.monotonic() + seconds if seconds is not None else None}
        if self.on_phase is not None:
            self.on_phase()

    def _collect(self, device: str, suffix: str, payload: Dict[str, Any]) -> None:
        if suffix == "events" and payload.get("request_id"):
            self.events.setdefault(str(payload["request_id"]), []).append(payload)
        elif suffix == "telemetry":
            self.telemetry.setdefault(device, []).append(payload)

    # ---- status helpers (called with or without the lock; reads are of whole dicts) ----
    def model_of(self, device: str) -> Optional[str]:
        model = (self.watch.inventory.status.get(device) or {}).get("model") or {}
        return "{}@{}".format(model.get("name"), model.get("version")) if model else None

    def say(self, device: Optional[str], what: str, **fields: Any) -> None:
        self.emit(self.state.note(device, what, **fields))

    def _step(self, device: str, step: str, **fields: Any) -> None:
        self.state.set_step(device, step, **fields)
        self.emit(self.state.doc["log"][-1])

    def control(self) -> Optional[str]:
        return st.read_control(self.state.path)

    # ---- the run ----
    def run(self) -> str:
        doc = self.state.doc
        self.watch.sync()
        while doc["outcome"] == "running" and doc["stage"] < len(doc["stages"]):
            stage = doc["stage"]
            outcome = self.run_stage(doc["stages"][stage],
                                     "canary" if stage == 0 else "batch {}".format(stage))
            if outcome is not None:
                return outcome
            doc["stage"] = stage + 1
            self.state.save()
        if doc["outcome"] == "running":
            left = self.offline()
            if left:  # retried once more, after waiting a while for them to come back
                self.say(None, "waiting_for_offline", devices=left,
                         seconds=self.opt["offline_wait_s"])
                self._phase("waiting for offline devices", self.opt["offline_wait_s"])
                self.watch.wait(lambda: all(self.watch.inventory.online(d) for d in left)
                                or self.control(), self.opt["offline_wait_s"])
                outcome = self.run_stage(left, "retry offline")
                if outcome is not None:
                    return outcome
            left = self.offline()
            doc["outcome"] = "incomplete" if left else "done"
            self.say(None, doc["outcome"], counts=self.state.counts(), offline=left)
        return doc["outcome"]

    def offline(self) -> List[str]:
        return sorted(d for d, e in self.state.doc["devices"].items() if e["step"] == st.OFFLINE)

    def run_stage(self, names: List[str], label: str) -> Optional[str]:
        """One stage; returns an outcome when the rollout must stop, else None."""
        todo = [d for d in names if self.state.device(d)["step"] not in (st.OK, st.FAILED)]
        self._phase("telemetry before the update")
        self.say(None, "stage", name=label, devices=todo)
        stop = self._check_control()
        if stop:
            return stop
        if not self.watch.connected:  # the broker restarts: statuses are stale until it is back
            self.say(None, "waiting_for_broker")
            self.watch.wait(lambda: self.watch.connected, self.opt["activate_timeout_s"])
        self._await_baselines(todo)
        stop = self._check_control()  # nothing of this stage sent yet: a clean place to stop
        if stop:
            return stop
        waiting = []
        for device in todo:
            if self._start(device):
                waiting.append(device)
        # Once installs are out, a pause waits for their outcome and window (no device is
        # left half-judged); an abort interrupts at once.
        self._phase("installing")
        self._await_activation(waiting)
        if not self._aborting():
            self._watch_window([d for d in waiting
                                if self.state.device(d)["step"] == st.ACTIVATED])
        if self._aborting():
            return self.roll_back_all("aborted", "fleet abort")
        failed = [d for d, e in self.state.doc["devices"].items() if e["step"] == st.FAILED]
        regressed = [d for d in names if self.state.device(d).get("regressed")]
        if regressed or len(failed) > self.opt["max_failures"]:
            why = ("regression on " + ", ".join(regressed) if regressed else
                   "{} failed (--max-failures {})".format(len(failed), self.opt["max_failures"]))
            return self.roll_back_all("rolled_back", why)
        return self._check_control()

    def _aborting(self) -> bool:
        return self.control() == "abort"

    def _check_control(self) -> Optional[str]:
        control = self.control()
        if control == "pause":
            self.state.doc["outcome"] = "paused"
            self.say(None, "paused", hint="continue with `fleet rollout --resume`")
            return "paused"
        if control == "abort":
            return self.roll_back_all("aborted", "fleet abort")
        return None

    def _start(self, device: str) -> bool:
        """Send the install (or pick up one sent before a crash); False when not sent."""
        entry = self.state.device(device)
        inv = self.watch.inventory
        if entry["step"] == st.ACTIVATED:  # activated before a crash: only its window is left
            return True
        if not inv.online(device):
            entry["attempts"] = entry.get("attempts", 0) + 1
            self._step(device, st.OFFLINE, detail="offline: retried at the end and at --resume")
            return False
        status = inv.status.get(device) or {}
        ours = bool(entry.get("request_id")) and entry.get("model_before") != self.target
        if entry["step"] == st.OFFLINE and ours and self.model_of(device) == self.target:
            # Went offline after its install and came back on the target: its window again.
            self._step(device, st.ACTIVATED, activated_ts=status.get("ts") or time.time(),
                       detail="back online on {}: its window again".format(self.target))
            return True
        if (entry["step"] == st.OFFLINE and ours and not entry.get("activated_ts")
                and status.get("boot") and status.get("boot") == entry.get("boot")):
            # Only its connection dropped (the same run of the agent): the install it got may
            # still be under way, so the same request again. After a restart (another boot)
            # the agent has dropped it, and a new request is sent below.
            entry["step"] = st.SENT
        if self.model_of(device) == self.target and entry["step"] != st.SENT:
            self._step(device, st.OK, detail="already runs " + self.target)
            return False
        if entry["step"] == st.SENT:  # sent before the operator stopped: same request again
            self.say(device, "resent", request_id=entry["request_id"])
        else:
            entry["attempts"] = entry.get("attempts", 0) + 1
            with self.watch.cond:
                base = self._baseline(device)
            rid = "{}-{}-{}".format(self.state.doc["id"], device, entry["attempts"])
            entry["boot"] = status.get("boot")  # the agent's run that gets the request
            self._step(device, st.SENT, request_id=rid, baseline=base,
                       sent_ts=round(time.time(), 3), model_before=self.model_of(device))
        payload = dict(self.state.doc["install"], request_id=entry["request_id"])
        self.watch.send(device, "model/install", payload)
        return True

    def _resend(self, device: str) -> None:
        """The same install again, same request_id: an agent that had it answers `rejected`
        (already received) and does not run it twice; one that had not runs it."""
        entry = self.state.device(device)
        self.say(device, "resent", request_id=entry["request_id"],
                 detail="no answer; the broker connection was lost or the device was away")
        self.watch.send(device, "model/install",
                        dict(self.state.doc["install"], request_id=entry["request_id"]))

    def _before(self, device: str) -> List[Dict[str, Any]]:
        """Telemetry of this run of the agent with the model it serves now."""
        boot = (self.watch.inventory.status.get(device) or {}).get("boot")
        model = self.model_of(device)
        return [m for m in self.telemetry.get(device, []) if m.get("boot") == boot
                and m.get("model") == model and (m.get("frames") or 0) > 0]

    def _baseline(self, device: str) -> Dict[str, Optional[float]]:
        """The device's figures before the update: the median of its last telemetry."""
        return median_figures(self._before(device)[-10:])

    def _await_baselines(self, devices: List[str]) -> None:
        """Telemetry is not retained: listen until every online device of the stage has sent
        BASELINE_WINDOWS messages, or --window seconds from the operator's start have passed
        and each has sent at least one."""
        inv = self.watch.inventory
        window_end = self.started + self.opt["window_s"]

        def enough() -> bool:
            # Online now: one whose Last Will arrives meanwhile is no longer waited for.
            counts = [len(self._before(d)) for d in devices
                      if inv.online(d) and self.model_of(d) != self.target]
            return not counts or min(counts) >= BASELINE_WINDOWS or (
                time.monotonic() >= window_end and min(counts) >= 1)
        self.watch.wait(lambda: enough() or self.control(),
                        self.opt["window_s"] + self.opt["activate_timeout_s"])

    def _outcome(self, device: str) -> Optional[Dict[str, Any]]:
        entry = self.state.device(device)
        for event in self.events.get(entry["request_id"], []):
            state = event.get("state")
            if state in FINAL_OK:
                return event
            if state in FINAL_BAD and REPLAYED not in str(event.get("error")):
                return event
        if self.model_of(device) == self.target and entry.get("model_before") != self.target:
            status = self.watch.inventory.status.get(device) or {}
            return {"state": "activated", "detail": "status shows " + self.target,
                    "ts": status.get("ts")}
        return None

    def _await_activation(self, devices: List[str]) -> None:
        if not devices:
            return
        timeout = self.opt["activate_timeout_s"]
        inv = self.watch.inventory
        deadline = time.monotonic() + timeout
        sent = dict((d, (time.monotonic(), self.watch.connects)) for d in devices)
        while True:
            left = deadline - time.monotonic()
            if self.watch.wait(lambda: all(self._outcome(d) or not inv.online(d) for d in devices)
                               or self._aborting(), max(0.0, min(left, 1.0))) or \
                    time.monotonic() >= deadline:
                break
            for device in devices:
                with self.watch.cond:
                    when, connects = sent[device]
                    unanswered = not self.events.get(self.state.device(device)["request_id"])
                    again = unanswered and self.watch.connected and inv.online(device) and (
                        self.watch.connects != connects or time.monotonic() - when > RESEND_S)
                if again:  # lost with a broker restart, or sent before the device subscribed
                    self._resend(device)
                    sent[device] = (time.monotonic(), self.watch.connects)
        if self._aborting():
            return  # no verdicts: every device the rollout changed is rolled back
        timed_out = time.monotonic() >= deadline
        for device in devices:
            with self.watch.cond:
                event = self._outcome(device)
                online = inv.online(device)
            # Before the deadline, a device without an outcome is one whose Last Will ended
            # the wait (it may be back already): retried at the end, not failed.
            if event is None and (not online or not timed_out):
                self._step(device, st.OFFLINE, detail="offline before its activation was seen; "
                           "retried at the end and at --resume")
            elif event is None:
                self._step(device, st.FAILED, error="no activated event within "
                                    "{:.0f} s (--activate-timeout)".format(timeout))
            elif event["state"] in FINAL_OK:
                # The device's clock, like the telemetry's `ts` it is compared with.
                self._step(device, st.ACTIVATED, activated_ts=event.get("ts") or time.time())
            else:
                self._step(device, st.FAILED, error=event.get("error"),
                                    detail=event.get("detail"))

    def _after(self, device: str) -> List[Dict[str, Any]]:
        """Telemetry windows that began after the activation (no old model's frames)."""
        since = self.state.device(device)["activated_ts"]
        return [m for m in self.telemetry.get(device, []) if m.get("model") == self.target
                and (m.get("ts") or 0) - (m.get("window_s") or 0) >= since
                and (m.get("frames") or 0) > 0]

    def _went_back(self, device: str) -> bool:
        """The device's status, published after its activation, names another model. A
        status from before (the `activated` event may come first, or the new status be lost)
        says nothing yet: its telemetry or a newer status will tell."""
        status = self.watch.inventory.status.get(device) or {}
        since = self.state.device(device).get("activated_ts") or 0
        return self.model_of(device) != self.target and (status.get("ts") or 0) >= since

    def _watch_window(self, devices: List[str]) -> None:
        """Telemetry for --window seconds (at least one message each), then the gates."""
        if not devices:
            return
        window = self.opt["window_s"]
        self._phase("watching telemetry", window)
        self.watch.wait(self._aborting, window)
        self._phase("telemetry after the window")
        self.watch.wait(lambda: all(self._after(d) or self._went_back(d)
                                    or not self.watch.inventory.online(d)
                                    for d in devices) or self._aborting(),
                        self.opt["activate_timeout_s"])
        if self._aborting():
            return
        for device in devices:
            entry = self.state.device(device)
            with self.watch.cond:
                seen = self._after(device)
                after = median_figures(seen)
                now = self.model_of(device)
                went_back = self._went_back(device)
                online = self.watch.inventory.online(device)
            if not online:  # the Last Will: not a verdict on the model; retried at the end
                self._step(device, st.OFFLINE, after=after,
                           detail="went offline during its window; retried at the end")
                continue
            if went_back:
                self._step(device, st.FAILED, after=after,
                                    error="the device went back to {} (probation rolled it "
                                          "back, or another command)".format(now))
                continue
            if now != self.target and not seen:
                self._step(device, st.FAILED, error="neither a status nor telemetry of {} "
                           "since its activation within {:.0f} s (--activate-timeout)".format(
                               self.target, self.opt["activate_timeout_s"]))
                continue
            worse = regressions(entry.get("baseline") or {}, after, self.opt["max_regression"])
            if worse:
                self._step(device, st.FAILED, after=after, regressed=worse,
                                    error="regression: " + "; ".join(worse))
            else:
                base = entry.get("baseline") or {}
                self._step(device, st.OK, after=after, before=base,
                           gated=any(base.get(k) is not None and after.get(k) is not None
                                     for k, _ in GATES))

    def roll_back_all(self, outcome: str, why: str) -> str:
        """Roll back every device this rollout changed; the others are not touched."""
        touched = self.state.touched()
        self.say(None, "rolling_back", reason=why, devices=touched)
        self._phase("rolling back")
        sent = {}  # type: Dict[str, str]
        for device in touched:
            if not self.watch.inventory.online(device):  # it may still run the target
                self.say(device, "rollback_failed", error="offline: no rollback sent",
                         hint="when it is back: `edge-agent send model/rollback --device "
                              "{}`".format(device))
                continue
            if self.model_of(device) != self.target:
                self._step(device, st.ROLLED_BACK, detail="already off " + self.target)
                continue
            rid = "{}-{}-rollback".format(self.state.doc["id"], device)
            self.watch.send(device, "model/rollback", {"request_id": rid})
            sent[device] = rid

        def settled() -> bool:
            return all(any(e.get("state") in FINAL_OK + FINAL_BAD
                           for e in self.events.get(rid, [])) for rid in sent.values())
        self.watch.wait(settled, self.opt["activate_timeout_s"])
        for device, rid in sorted(sent.items()):
            with self.watch.cond:
                states = [e.get("state") for e in self.events.get(rid, [])]
            if "activated" in states:
                self._step(device, st.ROLLED_BACK)
            else:
                self.say(device, "rollback_failed", states=states,
                         hint="retry with `fleet rollback --group G`")
        self.state.doc["outcome"] = outcome
        self.say(None, outcome, reason=why, counts=self.state.counts())
        return outcome
