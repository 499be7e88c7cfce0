"""The raspberry-pi target: a GGUF served by llama-server under systemd."""
