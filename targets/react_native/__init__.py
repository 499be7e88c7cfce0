"""The react-native target: a GGUF for llama.rn, the TypeScript bridge and a sample app."""

from targets.react_native.target import ReactNativeTarget

__all__ = ["ReactNativeTarget"]
