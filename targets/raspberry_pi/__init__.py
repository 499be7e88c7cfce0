"""The raspberry-pi target: a GGUF served by llama-server under systemd."""

from targets.raspberry_pi.target import RaspberryPiTarget

__all__ = ["RaspberryPiTarget"]
