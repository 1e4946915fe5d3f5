"""Optional MQTT output (paho-mqtt): every processed frame, as the same JSON the WebSocket sends, on a topic
per camera (``[mqtt] topic`` with ``{camera}`` replaced), at the configured QoS.

paho's network thread connects in the background and reconnects by itself (1 s doubling to 30 s): a
broker that is down or goes away never blocks or stops the frame loop. While disconnected, QoS 0 messages
are dropped (counted as ``dropped``), QoS 1/2 messages queue up to ``max_queued`` and then are dropped.
``status_topic`` gets a retained ``online`` on connect and ``offline`` on a clean stop, and the broker
publishes ``offline`` (the last will) when the daemon disappears without one.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from ..errors import require
from .config import MqttConfig
from .metrics import Metrics

log = logging.getLogger("rtmw_edge.serve.mqtt")


class MqttPublisher:
    def __init__(self, cfg: MqttConfig, metrics: Metrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.connected = False
        self._client = None
        self._closing = False

    def topic(self, camera: str) -> str:
        return self.cfg.topic.replace("{camera}", camera)

    def start(self) -> None:
        require("paho.mqtt.client", "serve")
        import paho.mqtt.client as mqtt

        cfg = self.cfg
        client_id = cfg.client_id or f"rtmw-edge-{socket.gethostname()}-{os.getpid()}"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        client.reconnect_delay_set(1, 30)
        client.max_queued_messages_set(cfg.max_queued)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password or None)
        if cfg.tls:
            client.tls_set(ca_certs=cfg.ca_file or None)
        if cfg.status_topic:
            client.will_set(cfg.status_topic, "offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        client.loop_start()
        self._client = client
        log.info("mqtt: connecting to %s:%d", cfg.host, cfg.port,
                 extra={"event": "mqtt_connecting", "host": cfg.host, "port": cfg.port})

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if getattr(reason_code, "is_failure", False):
            log.warning("mqtt: broker refused the connection: %s", reason_code,
                        extra={"event": "mqtt_refused", "reason": str(reason_code)})
            return
        self.connected = True
        self.metrics.mqtt_connected.set(1)
        if self.cfg.status_topic:
            client.publish(self.cfg.status_topic, "online", qos=1, retain=True)
        log.info("mqtt: connected to %s:%d", self.cfg.host, self.cfg.port, extra={"event": "mqtt_connected"})

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        was = self.connected
        self.connected = False
        self.metrics.mqtt_connected.set(0)
        if was and not self._closing:
            log.warning("mqtt: disconnected (%s); reconnecting", reason_code,
                        extra={"event": "mqtt_disconnected", "reason": str(reason_code)})

    def publish(self, camera: str, payload: str) -> None:
        """Non-blocking; called from the inference thread."""
        client = self._client
        if client is None:
            return
        if not self.connected and self.cfg.qos == 0:
            self.metrics.mqtt_messages.labels(camera, "dropped").inc()
            return
        try:
            info = client.publish(self.topic(camera), payload, qos=self.cfg.qos, retain=self.cfg.retain)
            ok = info.rc == 0
        except Exception as exc:  # e.g. a payload paho refuses: count it, never stop the loop
            log.debug("mqtt publish failed: %s", exc)
            ok = False
        self.metrics.mqtt_messages.labels(camera, "published" if ok else "dropped").inc()

    def stop(self, timeout: float = 0.5) -> None:
        """Say offline, disconnect and stop the network thread, giving up after `timeout` seconds."""
        client, self._client = self._client, None
        if client is None:
            return
        self._closing = True

        def close() -> None:
            try:
                if self.connected and self.cfg.status_topic:
                    info = client.publish(self.cfg.status_topic, "offline", qos=1, retain=True)
                    info.wait_for_publish(timeout=timeout / 2)
                client.disconnect()
                client.loop_stop()
            except Exception as exc:  # shutting down anyway
                log.debug("mqtt stop: %s", exc)

        thread = threading.Thread(target=close, name="rtmw-edge-mqtt-stop", daemon=True)
        thread.start()
        thread.join(timeout)
        self.connected = False
        self.metrics.mqtt_connected.set(0)
