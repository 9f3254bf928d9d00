# The two commands a newcomer runs: `make demo` and `make test`. Each builds .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo serve test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# the sandbox Directory and AnyBank over HTTPS on free loopback ports, the TPP's every step
demo: $(STAMP)
	$(BIN)/python -m example_app.demo

# both servers kept running for a workshop (state in ./instance); Ctrl-C stops them
DIRECTORY_PORT ?= 8443
BANK_PORT ?= 9443
serve: $(STAMP)
	$(BIN)/python -m example_app.serve --workdir instance \
		--directory-port $(DIRECTORY_PORT) --bank-port $(BANK_PORT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check flask_obdcr example_app tests benchmarks
	$(BIN)/mypy flask_obdcr example_app tests benchmarks

bench: $(STAMP)
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/registration.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
