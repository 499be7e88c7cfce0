"""edgepack: one fine-tuned checkpoint in, verified edge artifacts out.

The flow, module by module: checkpoint -> pipeline stages (formats/) -> target bundles (targets/)
-> verification (verify/) -> manifest and report.
"""

__version__ = "0.1.0"
