# Convenience targets over scripts/ (the scripts are what CI and the README run).
.PHONY: all build test bench run deps clean
all: build
deps:
	scripts/install-deps.sh
build:
	scripts/build.sh
test:
	scripts/test.sh
bench: build
	bench/run.sh
run:
	scripts/quickstart.sh
clean:
	rm -rf build
