#!/usr/bin/env bash
# Build Beam's Prism runner from the Beam Go SDK at the version of the installed apache-beam, into
# the folder runners/prism.py looks in (no download at run time). Usage: scripts/build_prism.sh [PYTHON]
#   PYTHON                   the venv's python (default .venv/bin/python): it names the Beam version
#   BEAM_PIPELINE_PRISM_DIR  the cache root (default ~/.cache/beam_pipeline/prism)
#   PRISM_PATCH=0            build the module as served (go install), without the one-line fix of
#                            scripts/prism/no-spin.py (a busy loop that takes a core from the workers)
# Needs Go 1.2x and the Go module proxy (the module has ~150 dependencies; about 2 minutes on 2 cores).
set -euo pipefail
PYTHON=${1:-.venv/bin/python}
version=$("$PYTHON" -c 'from apache_beam.version import __version__; print(__version__)')
root=${BEAM_PIPELINE_PRISM_DIR:-$HOME/.cache/beam_pipeline/prism}
target="$root/v$version"
module=github.com/apache/beam/sdks/v2
package=$module/go/cmd/prism  # runners/prism.py GO_PACKAGE
patch=${PRISM_PATCH:-1}
built="as served"; [ "$patch" != 0 ] && built="with scripts/prism/no-spin.py"
if [ -x "$target/prism" ] && [ "$(cat "$target/BUILD" 2>/dev/null)" = "$package@v$version $built" ]; then
    echo "prism: $target/prism is already built for apache-beam $version ($built)"
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    echo "prism: Go is not installed: install Go 1.22 or newer (https://go.dev/doc/install), then make prism" >&2
    exit 1
fi
mkdir -p "$target"
echo "prism: building $package@v$version ($built) with $(go version) into $target"
if [ "$patch" = 0 ]; then
    GOBIN="$target" GOFLAGS=-mod=mod go install "$package@v$version"
else
    src=$(go mod download -json "$module@v$version" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
    work=$(mktemp -d)
    trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
    cp -r "$src/." "$work" && chmod -R u+w "$work"
    "$PYTHON" "$(dirname "$0")/prism/no-spin.py" "$work"
    (cd "$work" && GOFLAGS=-mod=mod go build -o "$target/prism" ./go/cmd/prism)
fi
"$target/prism" --help >/dev/null 2>&1 || { echo "prism: $target/prism does not run" >&2; exit 1; }
echo "$package@v$version $built" > "$target/BUILD"
echo "prism: built $target/prism ($built)"
