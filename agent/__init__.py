"""edge-agent: turns an NVIDIA Jetson (or any machine) into a managed inference device."""

__version__ = "0.1.0"
