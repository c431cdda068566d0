#!/usr/bin/env bash
# Build Beam's Prism runner from the Beam Go SDK at the version of the installed apache-beam, into
# the folder runners/prism.py looks in (no download at run time). Usage: scripts/build_prism.sh [PYTHON]
#   PYTHON                   the venv's python (default .venv/bin/python): it names the Beam version
#   BEAM_PIPELINE_PRISM_DIR  the cache root (default ~/.cache/beam_pipeline/prism)
# Needs Go 1.2x and the Go module proxy (the module has ~150 dependencies; about 2 minutes on 2 cores).
set -euo pipefail
PYTHON=${1:-.venv/bin/python}
version=$("$PYTHON" -c 'from apache_beam.version import __version__; print(__version__)')
root=${BEAM_PIPELINE_PRISM_DIR:-$HOME/.cache/beam_pipeline/prism}
target="$root/v$version"
package=github.com/apache/beam/sdks/v2/go/cmd/prism  # runners/prism.py GO_PACKAGE
if [ -x "$target/prism" ]; then
    echo "prism: $target/prism is already built for apache-beam $version"
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    echo "prism: Go is not installed: install Go 1.22 or newer (https://go.dev/doc/install), then make prism" >&2
    exit 1
fi
mkdir -p "$target"
echo "prism: building $package@v$version with $(go version) into $target"
GOBIN="$target" GOFLAGS=-mod=mod go install "$package@v$version"
"$target/prism" --help >/dev/null 2>&1 || { echo "prism: $target/prism does not run" >&2; exit 1; }
echo "prism: built $target/prism"
