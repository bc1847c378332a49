"""edge-agent: small language models next to IoT sensors, answering on MQTT."""

__version__ = "0.1.0"
