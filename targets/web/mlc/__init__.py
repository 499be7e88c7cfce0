"""WebLLM (MLC) weights: the writer, the prebuilt model-library table and the structural check."""
