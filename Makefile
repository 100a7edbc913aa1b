# Thin wrappers around scripts/: each target calls the script that does the work.
.PHONY: all setup build test demo
all: build

setup:   ## install the Debian packages hanse needs
	scripts/setup --no-build

build:   ## install what is missing, configure and build (Release) into build/
	scripts/setup

test:    ## build, then run every test
	scripts/test

demo:    ## build, then run the three-site Fashion-MNIST demo
	scripts/demo
