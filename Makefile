# `make help` lists the targets and the variables they take. A newcomer runs `make demo`
# (or `make serve` for a workshop) and `make test`; each builds .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the full install: the test extra (every storage driver, pytest, ruff, mypy, the notebook
# runner): make test, lint, and the rest
STAMP := $(VENV)/.installed
# what the demo and the workshop servers need, and no more: the package and its demo extra
DEMO_STAMP := $(VENV)/.installed-demo
# make demo / serve / reset run with the full install when it is there (it includes the
# demo extra), else with the small one, so that a first `make demo` installs only that
DEMO_DEPS := $(if $(wildcard $(STAMP)),$(STAMP),$(DEMO_STAMP))

# make demo VERBOSE=1 STEP=1 KEEP=1 AUTH_METHOD=private_key_jwt (1, yes, true or on)
truthy = $(filter 1 y yes true on,$(1))
DEMO_FLAGS := $(if $(call truthy,$(VERBOSE)), --verbose)$(if $(call truthy,$(STEP)), --step)$(if $(call truthy,$(KEEP)), --keep)$(if $(AUTH_METHOD), --auth-method $(AUTH_METHOD))

# make serve: the workshop's servers on fixed loopback ports, their state in $(INSTANCE).
# Several attendees on one machine each take their own pair of ports (0: any free port, the
# banner shows which) and, sharing a checkout, their own INSTANCE.
DIRECTORY_PORT ?= 8443
BANK_PORT ?= 9443
# the TPP's web page (its redirect URI: https://127.0.0.1:$(TPP_PORT)/callback)
TPP_PORT ?= 7443
INSTANCE ?= instance
# what runs the bank: werkzeug (its own TLS), or granian behind nginx (nginx terminates TLS and
# passes the client certificate on; needs nginx, its njs module and granian)
SERVER ?= werkzeug

.DEFAULT_GOAL := help
.PHONY: help demo serve reset test lint bench clean

help:
	@echo "make demo     the whole story, offline, in a few seconds: a sandbox Open Banking"
	@echo "              Directory, a bank (AnyBank) and a TPP's page on free loopback ports; the"
	@echo "              TPP registers, then a customer consents and the TPP reads the accounts"
	@echo "              chosen; each step's title, its command and what matters"
	@echo "                VERBOSE=1   everything each command prints"
	@echo "                STEP=1      pause after each step (Enter goes on; not without a terminal)"
	@echo "                KEEP=1      keep the working folder (its path is printed)"
	@echo "                AUTH_METHOD=private_key_jwt   a signed client assertion, not the certificate"
	@echo "make serve    the three servers kept running for a workshop; Ctrl-C stops them"
	@echo "                DIRECTORY_PORT=$(DIRECTORY_PORT)  the sandbox Directory's HTTPS port"
	@echo "                BANK_PORT=$(BANK_PORT)       AnyBank's HTTPS port"
	@echo "                TPP_PORT=$(TPP_PORT)        the TPP's web page (its redirect URI: /callback)"
	@echo "                (0: any free port; taken or shared machine: others, e.g. 8444 9444 7444)"
	@echo "                INSTANCE=$(INSTANCE)   the workshop state: PKI, registry, clients, TPP files"
	@echo "                SERVER=granian   the bank under granian behind nginx (default: werkzeug);"
	@echo "                                 needs nginx with njs, and granian: it says what to install"
	@echo "              a second make serve on the same INSTANCE prints the running one's URLs"
	@echo "make reset    remove the workshop state (INSTANCE) once no make serve runs on it"
	@echo "                STOP=1      stop the running one first"
	@echo "make test     the test suite (installs the test extra); make lint: ruff and mypy"
	@echo "make bench    the registration benchmark; make clean: remove .venv and build files"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[demo]'
	touch $(DEMO_STAMP)

# the sandbox Directory and AnyBank over HTTPS on free loopback ports, the TPP's every step
demo: $(DEMO_DEPS)
	$(BIN)/python -m example_app.demo$(DEMO_FLAGS)

# both servers kept running for a workshop (state in $(INSTANCE)); Ctrl-C stops them
serve: $(DEMO_DEPS)
	$(BIN)/python -m example_app.serve --workdir $(INSTANCE) \
		--directory-port $(DIRECTORY_PORT) --bank-port $(BANK_PORT) --tpp-port $(TPP_PORT) \
		--server $(SERVER)

# the workshop state removed, once no `make serve` runs on it (STOP=1: stop it first)
reset: $(DEMO_DEPS)
	$(BIN)/python -m example_app.serve --workdir $(INSTANCE) --reset$(if $(call truthy,$(STOP)), --stop)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check flask_obdcr example_app tests benchmarks
	$(BIN)/mypy flask_obdcr example_app tests benchmarks

bench: $(STAMP)
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python -m benchmarks.registration

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
