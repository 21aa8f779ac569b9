# Convenience targets over scripts/ (the scripts are what CI and the README run).
.PHONY: all build test bench run deps clean paper paper-report cluster cluster-stop device-bundle images
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
# The paper study, long regime (issue 14): every missing run, one after another (about 4 hours
# of a 2-core machine in all; stored runs are skipped, so it resumes), then docs/RESULTS.md.
# `study.py --regime short` reruns the first study's. paper-report rewrites the report alone.
paper: build
	scripts/fetch-corpus.sh data/sotu
	[ -f data/sotu-1k/meta.json ] || build/cli/raptrctl data prepare --input data/sotu --out data/sotu-1k --vocab-size 1024
	/usr/bin/python3 bench/paper/study.py
paper-report:
	/usr/bin/python3 bench/paper/study.py --report-only
cluster: build
	scripts/local-cluster.sh start
cluster-stop:
	scripts/local-cluster.sh stop
# The one-call GPU check's bundle (issue 11): builds build-bundle/ and writes build/cuda-device.tgz
# (at most 40 MiB) for scripts/device-check.sh; docs/DEVICE_CHECK.md has the device call.
device-bundle:
	scripts/device-bundle.sh
# The three images of deploy/docker, built for real with podman (chroot isolation, vfs storage,
# a debootstrapped debian:12), then checked from their filesystems and against the Kubernetes
# overlays; a small job trained by the coordinator and CPU worker images. Needs root, podman and
# debootstrap; about 30 minutes on 2 cores, 17 GB of disk at its peak: too slow for CI
# (docs/OPERATIONS.md has the last run).
images:
	scripts/images.sh
clean:
	rm -rf build
