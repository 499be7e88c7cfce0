"""The react-native target: a GGUF for llama.rn, the TypeScript bridge and a sample app."""
