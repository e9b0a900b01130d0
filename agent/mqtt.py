"""MQTT link: paho-mqtt 1.6 and 2.x, TLS, Last Will, reconnect, durable spool, command routing.

Every QoS 1 message goes through the on-disk spool (agent/spool.py) and a sender thread hands
spooled messages to paho in order, only while connected, and deletes each one when the broker
acknowledges it. A broker outage or an agent restart therefore loses nothing. After a
reconnect, paho first re-sends what was in flight; new messages follow once those are
acknowledged, so the order on the broker is the order of production.

This module knows nothing about inference: it carries JSON messages and routes commands.
"""

import json
import logging
import socket
import sqlite3
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Set

log = logging.getLogger(__name__)

CommandHandler = Callable[..., None]  # (command, payload, topic[, retained=True])


class SendState(NamedTuple):
    """A snapshot of the link's sender (`MqttLink.sending()`)."""

    sent_up_to: int  # the highest spool id handed to paho
    in_flight: int   # messages handed to paho and not yet acknowledged
    held_back: int   # times the sender, connected, waited: window full or re-sends unacknowledged


def _rc_value(rc: Any) -> int:
    """paho 2.x passes ReasonCode objects, 1.x plain ints."""
    value = getattr(rc, "value", rc)
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def topic_for(prefix: str, device_id: str, suffix: str) -> str:
    return "{}/{}/{}".format(prefix, device_id, suffix)


def make_client(cfg: Any, client_id: str) -> Any:
    """A paho client (1.6 or 2.x API) with the `mqtt` config's credentials and TLS applied;
    the agent's link and the operator's `send` both start from it."""
    try:
        import paho.mqtt.client as mqtt
    except Exception as exc:  # ImportError, or a broken install raising anything else
        from .errors import AgentError
        raise AgentError("paho-mqtt cannot be imported ({}: {}): pip install "
                         "'paho-mqtt>=1.6,<3' (1.6.x on Python 3.6)".format(
                             type(exc).__name__, exc))
    if hasattr(mqtt, "CallbackAPIVersion"):
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=True)
    else:
        client = mqtt.Client(client_id=client_id, clean_session=True)
    if cfg.username:
        client.username_pw_set(cfg.username, read_password(cfg.password_file))
    if cfg.tls.enabled:
        import ssl
        client.tls_set(ca_certs=cfg.tls.ca_file, certfile=cfg.tls.cert_file,
                       keyfile=cfg.tls.key_file, cert_reqs=ssl.CERT_REQUIRED)
    return client


def read_password(path: Optional[str]) -> Optional[str]:
    if not path:
        return None
    from .errors import ConfigError
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError as exc:
        raise ConfigError("config: mqtt.password_file: cannot read {}: {}".format(
            path, exc.strerror or exc))


class MqttLink(object):
    """One broker connection for one device."""

    INFLIGHT_WINDOW = 32

    def __init__(self, cfg: Any, device_id: str, group: Optional[str], spool: Any,
                 on_command: Optional[CommandHandler] = None,
                 will_payload: Optional[Dict[str, Any]] = None) -> None:
        self.cfg = cfg
        self.device_id = device_id
        self.group = group
        self.spool = spool
        self.on_command = on_command
        self.prefix = cfg.prefix
        self.connected = False
        self.last_error = None  # type: Optional[str]
        self.spool_errors = 0
        self._will_payload = will_payload or {"state": "offline"}
        self._cond = threading.Condition()
        self._inflight = {}  # type: Dict[int, int]   # paho mid -> spool row id
        self._early_acks = set()  # type: Set[int]
        # Spool rows the broker acknowledged; the sender deletes them in one transaction.
        self._acked = []  # type: List[int]
        self._sent_up_to = 0  # highest spool id handed to paho
        self._resync = False
        self._held_back = 0
        self._stop = threading.Event()
        self._sender = None  # type: Optional[threading.Thread]
        self._connects = 0
        # Called (paho's thread) at every connect after the first: the broker may have put the
        # Last Will in the retained status meanwhile, so the owner publishes it again.
        self.on_reconnect = None  # type: Optional[Callable[[], None]]
        # Called first thing in the sender thread and in paho's network thread (at each
        # connect): the daemon puts them at idle priority there (agent/priority.py).
        self.enrol_helper = lambda: None  # type: Callable[[], Any]
        self._client = self._make_client()

    # ---- topics ----
    def topic(self, suffix: str) -> str:
        return topic_for(self.prefix, self.device_id, suffix)

    def command_topics(self) -> Dict[str, str]:
        """Subscription filter -> the prefix before the command name."""
        topics = {self.topic("cmd/#"): self.topic("cmd/")}
        if self.group:
            base = "{}/groups/{}/cmd/".format(self.prefix, self.group)
            topics[base + "#"] = base
        return topics

    # ---- client setup ----
    def _make_client(self) -> Any:
        client = make_client(self.cfg, self.cfg.client_id or
                             "edge-agent-{}".format(self.device_id))
        import paho.mqtt.client as mqtt
        self._mqtt = mqtt
        if hasattr(mqtt, "CallbackAPIVersion"):
            client.on_connect = lambda c, u, flags, rc, props=None: self._handle_connect(rc)
            client.on_disconnect = lambda c, u, flags, rc, props=None: self._handle_disconnect(rc)
            client.on_publish = lambda c, u, mid, rc=None, props=None: self._handle_puback(mid)
        else:
            client.on_connect = lambda c, u, flags, rc: self._handle_connect(rc)
            client.on_disconnect = lambda c, u, rc: self._handle_disconnect(rc)
            client.on_publish = lambda c, u, mid: self._handle_puback(mid)
        client.on_message = self._handle_message
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(self.INFLIGHT_WINDOW)
        client.max_queued_messages_set(0)
        will = dict(self._will_payload)
        client.will_set(self.topic("status"), json.dumps(will), qos=1, retain=True)
        return client

    # ---- lifecycle ----
    def start(self) -> None:
        """Connect in the background: no exception when the broker is down at boot."""
        try:
            self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        except (socket.error, ValueError) as exc:
            self.last_error = str(exc)
            log.warning("MQTT broker %s:%s: %s; will keep retrying", self.cfg.host,
                        self.cfg.port, exc)
        self._client.loop_start()
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._sender.start()

    def flush(self, timeout: float) -> bool:
        """Wait until every spooled message is acknowledged (or timeout); True when drained."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while len(self.spool) > 0:
                left = deadline - time.monotonic()
                if left <= 0 or not self.connected:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def stop(self, timeout: float = 3.0) -> None:
        """Flush what the broker can take within `timeout`, then disconnect cleanly."""
        self.flush(timeout)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._sender is not None:
            self._sender.join(2.0)
        self._apply_acks()
        try:
            self._client.disconnect()
        except Exception:  # disconnect on a never-connected client: nothing to do
            pass
        self._client.loop_stop()

    # ---- publishing ----
    def publish(self, suffix: str, payload: Dict[str, Any], kind: str, retain: bool = False,
                qos: Optional[int] = None) -> None:
        """Queue a JSON message for P/D/<suffix>. QoS 1 is spooled; QoS 0 is best effort."""
        data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")
        self.publish_raw(self.topic(suffix), data, kind, retain=retain, qos=qos)

    def publish_raw(self, topic: str, data: bytes, kind: str, retain: bool = False,
                    qos: Optional[int] = None) -> None:
        """Queue bytes for any topic (Home Assistant's discovery topics live outside P/D/;
        an empty retained payload clears a retained message), spooled like `publish`."""
        qos = self.cfg.qos if qos is None else qos
        if qos == 0:
            if self.connected:
                self._client.publish(topic, data, qos=0, retain=retain)
            return
        try:
            self.spool.put(topic, data, qos, retain, kind)
        except sqlite3.Error as exc:
            # Disk full or read-only: hand the message to paho's memory queue instead, so
            # serving goes on; it is lost only if the agent also restarts before delivery.
            self.spool_errors += 1
            if self.spool_errors == 1 or self.spool_errors % 1000 == 0:
                log.error("spool %s cannot store messages (%s, %d so far); sending from memory "
                          "until it can", getattr(self.spool, "path", "?"), exc,
                          self.spool_errors)
            self._client.publish(topic, data, qos=qos, retain=retain)
            return
        with self._cond:
            self._cond.notify_all()

    def _send_loop(self) -> None:
        self.enrol_helper()
        try:
            self._send_until_stopped()
        finally:
            self._apply_acks()

    def _send_until_stopped(self) -> None:
        while not self._stop.is_set():
            self._apply_acks()
            with self._cond:
                while not self._stop.is_set() and not self._can_send():
                    if self.connected:
                        self._held_back += 1
                    self._cond.wait(0.5)
                if self._stop.is_set():
                    return
                room = self.INFLIGHT_WINDOW - len(self._inflight)
                after = self._sent_up_to
            try:
                batch = self.spool.pending(room, after_id=after)
            except sqlite3.Error as exc:  # disk trouble: retry, never let the sender die
                log.error("spool %s unreadable (%s); retrying", getattr(self.spool, "path", "?"),
                          exc)
                self._stop.wait(1.0)
                continue
            if not batch:
                with self._cond:
                    if self._sent_up_to == after and not self._acked and \
                            not self._stop.is_set():
                        self._cond.wait(0.5)
                continue
            for msg in batch:
                if not self.connected:
                    break
                info = self._client.publish(msg.topic, msg.payload, qos=msg.qos,
                                            retain=msg.retain)
                rc = _rc_value(getattr(info, "rc", 0))
                if rc not in (0, 4):  # 4 = MQTT_ERR_NO_CONN: paho keeps it and sends on reconnect
                    log.warning("MQTT publish to %s refused by the client (rc %s); retrying",
                                msg.topic, rc)
                    break
                with self._cond:
                    self._sent_up_to = msg.id
                    if info.mid in self._early_acks:
                        self._early_acks.discard(info.mid)
                        self._acked.append(msg.id)
                    else:
                        self._inflight[info.mid] = msg.id

    def _apply_acks(self) -> None:
        """Delete what the broker acknowledged from the spool, in one transaction."""
        with self._cond:
            rows, self._acked = self._acked, []
        if not rows:
            return
        try:
            self.spool.ack_many(rows)
        except sqlite3.Error as exc:  # at worst they are sent again after a restart (QoS 1)
            log.error("spool: cannot mark %d messages delivered: %s", len(rows), exc)
        with self._cond:
            self._cond.notify_all()  # flush() waits for the spool to empty

    def sending(self) -> SendState:
        """Where the sender stands: what it handed to paho, what awaits a PUBACK, how often it
        held back while connected."""
        with self._cond:
            return SendState(self._sent_up_to, len(self._inflight), self._held_back)

    def _can_send(self) -> bool:
        if not self.connected or len(self._inflight) >= self.INFLIGHT_WINDOW:
            return False
        if self._resync:
            if self._inflight:
                return False
            self._resync = False
        return True

    # ---- paho callbacks (paho's network thread) ----
    def _handle_connect(self, rc: Any) -> None:
        self.enrol_helper()
        code = _rc_value(rc)
        if code != 0:
            # A refused CONNACK is not "connected" (bad credentials, not authorised, ...).
            reason = self._mqtt.connack_string(code) if code >= 0 else str(rc)
            self.last_error = "broker refused the connection: {}".format(reason)
            log.error("MQTT %s:%s %s; check mqtt.username/password_file/tls in the config",
                      self.cfg.host, self.cfg.port, self.last_error)
            return
        with self._cond:
            self.connected = True
            self.last_error = None
            self._cond.notify_all()
        log.info("MQTT connected to %s:%s as %s", self.cfg.host, self.cfg.port, self.device_id)
        for pattern in self.command_topics():
            self._client.subscribe(pattern, qos=1)
        self._connects += 1
        if self._connects > 1 and self.on_reconnect is not None:
            try:
                self.on_reconnect()
            except Exception:  # never let it kill paho's network thread
                log.exception("MQTT reconnect handler failed")

    def _handle_disconnect(self, rc: Any) -> None:
        code = _rc_value(rc)
        with self._cond:
            was = self.connected
            self.connected = False
            # What paho had in flight is re-sent by paho after the reconnect; new messages wait
            # until those are acknowledged, which keeps the order.
            self._resync = True
            self._cond.notify_all()
        if was and code != 0 and not self._stop.is_set():
            self.last_error = "connection lost (rc {})".format(code)
            log.warning("MQTT connection to %s:%s lost (rc %s); reconnecting, messages are "
                        "spooled on disk meanwhile", self.cfg.host, self.cfg.port, code)

    def _handle_puback(self, mid: int) -> None:
        with self._cond:
            row = self._inflight.pop(mid, None)
            if row is None:
                self._early_acks.add(mid)
                return
            self._acked.append(row)
            # The sender deletes the acknowledged rows when it next wakes. Wake it now only
            # when this ack matters to it: the window had been full, re-sends after a
            # reconnect are all acknowledged, or nothing is in flight any more (the rows are
            # deleted then, and flush() sees it).
            if not self._inflight or self._resync or \
                    len(self._inflight) == self.INFLIGHT_WINDOW - 1:
                self._cond.notify_all()

    def _handle_message(self, client: Any, userdata: Any, message: Any) -> None:
        topic = message.topic
        for prefix in self.command_topics().values():
            if topic.startswith(prefix):
                command = topic[len(prefix):]
                break
        else:
            return
        if self.on_command is None:
            return
        try:
            if getattr(message, "retain", False):
                # The broker replaying a retained message (at every subscribe): not a new
                # command. The handler answers it without running it.
                self.on_command(command, message.payload, topic, True)
            else:
                self.on_command(command, message.payload, topic)
        except Exception:  # a handler bug must not kill paho's network thread
            log.exception("command handler failed for %s", topic)
