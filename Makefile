# The two commands of the README. Both install what they need first (scripts/setup.sh).
.PHONY: example test lint

# Build the bundled example, a fleet of two specialists of Gemma 3 270M (examples/support-fleet: the intent
# router and the order extractor), for every target, and print a table per specialist. The router alone is
# `edgepack build --target all` (examples/intent-classifier).
example:
	scripts/setup.sh
	.venv/bin/edgepack build --config examples/support-fleet/edgepack.toml --target all --out dist/support-fleet --force

# The test suite, tiny random models and the real Gemma 3 270M alike (what CI runs), in two processes
# (one per core; a file stays in one process, so its module fixtures are built once).
test:
	scripts/setup.sh --dev
	.venv/bin/ruff check .
	EDGEPACK_REQUIRE_TOOLS=1 .venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=25

lint:
	.venv/bin/ruff check .
