# seenn-serve: every target installs what it needs (scripts/setup.sh) on a fresh Debian 12 machine.
SHELL := /bin/bash
PY := .venv/bin/python
PORT ?= 8080

.PHONY: run test setup setup-server build lint deny test-rust test-python test-deploy test-web test-clients test-image models bench-models ort clean

## Serve the committed models on :8080 (HTTP) and :50051 (gRPC).
run: setup-server build
	./target/release/seenn serve --models models --http-port $(PORT)

## Every test: formatting, lints, Rust unit + integration tests, Python tests.
test: setup build lint deny test-rust test-python test-deploy test-web test-clients

setup:
	scripts/setup.sh all

setup-server:
	scripts/setup.sh server

ort:
	scripts/fetch_ort.sh

build:
	cargo build --release --locked

lint:
	cargo fmt --check
	cargo clippy --release --locked --all-targets -- -D warnings
	# The CUDA build's code (device-resident slots, the CUDA provider) compiles and lints too.
	cargo clippy --release --locked --features cuda --all-targets -- -D warnings
	.venv/bin/ruff check training tests/deploy tests/web tests/kserve tests/openapi tests/structure tests/nir tests/bench tests/docs tests/helpers docs/images examples scripts benchmarks experiments fuzz

## Every dependency's licence, RustSec advisories (from the snapshot in .ci/advisory-db), sources.
deny:
	python3 scripts/advisory_db.py check
	python3 scripts/advisory_db.py install target/advisory-db
	cargo deny --locked check

test-rust:
	cargo test --release --locked --no-fail-fast -- --test-threads=2

test-python: build
	cd training && ../$(PY) -m pytest -q
	$(PY) -m pytest -q tests/structure tests/nir tests/docs
	$(PY) -m pytest -q tests/bench  # every benchmark suite, tiny (SMOKE=1); needs the release build

## Deployment files against real tools: docker-compose, promtool, Prometheus, kubectl kustomize.
test-deploy: build
	$(PY) -m pytest -q tests/deploy

## Build deploy/Dockerfile and deploy/Dockerfile.cuda with buildah (local Debian bases) and smoke-test the
## CPU image with `buildah run`: /readyz, a classification, the admin token file, the state directory,
## SIGTERM. Needs root.
test-image:
	nice -n 5 scripts/test_image.sh

## The web page in headless Chromium (Debian's chromium + chromedriver, driven by selenium).
test-web: build
	$(PY) -m pytest -q tests/web

## The Open Inference Protocol (REST and gRPC) through the real tritonclient[http] and [grpc], and
## the committed OpenAPI document through openapi-spec-validator.
test-clients: build
	$(PY) -m pytest -q tests/kserve tests/openapi

## Retrain and re-export models/fashion-mnist and models/fashion-mnist-qcfs from scratch.
models: setup
	scripts/make_models.sh

## The untrained ResNet-19 (CIFAR-10 shape) package for speed measurements.
bench-models: setup
	PYTHONPATH=training $(PY) -m seenn_train bench-model --arch resnet19 --width 0.125 --out models-bench/resnet19-bench

clean:
	cargo clean
	rm -rf .venv .ort
