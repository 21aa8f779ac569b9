# Convenience targets over scripts/ (the scripts are what CI and the README run).
.PHONY: all build test bench run deps clean paper paper-report cluster cluster-stop
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
# The paper study (issue 4): every missing run (about 3 hours for the study and its
# investigation), then docs/RESULTS.md. paper-report rewrites the report from the stored runs.
paper: build
	/usr/bin/python3 bench/paper/study.py
paper-report:
	/usr/bin/python3 bench/paper/study.py --report-only
cluster: build
	scripts/local-cluster.sh start
cluster-stop:
	scripts/local-cluster.sh stop
clean:
	rm -rf build
