"""The web target: wllama (GGUF) and WebLLM (MLC) bundles checked in headless Chromium. Read target.py first."""
