# Two commands on a fresh clone (each creates .venv with install.sh only when it is missing):
#   make run    - the main job: paper §5.1 (SBTM next to ULA, Figures 1-2) into runs/gaussian-1d
#   make test   - the default test suite
PY := .venv/bin/python

.PHONY: run test

run: | .venv/bin/sbtm-flows
	.venv/bin/sbtm-flows run gaussian-1d --out runs/gaussian-1d

test: | .venv/bin/sbtm-flows
	$(PY) -m pytest -q -n 2

.venv/bin/sbtm-flows:
	bash install.sh
