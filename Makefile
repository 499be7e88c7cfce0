# The two commands of the README. Both install what they need first (scripts/setup.sh).
.PHONY: example test lint

# Build the bundled example for every target and print the per-artifact table.
example:
	scripts/setup.sh
	.venv/bin/edgepack build --target all --force

# The test suite, tiny random models and the real Gemma 3 270M alike (what CI runs), in two processes
# (one per core; a file stays in one process, so its module fixtures are built once).
test:
	scripts/setup.sh --dev
	.venv/bin/ruff check .
	EDGEPACK_REQUIRE_TOOLS=1 .venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=25

lint:
	.venv/bin/ruff check .
