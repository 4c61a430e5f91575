#!/usr/bin/env bash
# Convenience wrapper around make.
#   ./build.sh [release|debug|all] [target...]
set -euo pipefail

usage() {
    cat <<USAGE
Usage: ./build.sh [release|debug|all] [target...]

  release   release library, benchmarks and tests (default)
  debug     debug (assertion) build: out/debug/
  all       both release and debug
  target... extra make targets to build after the mode's default,
            e.g. './build.sh release bench', './build.sh debug test'

Builds with make -j\$(nproc); set MAKE to use another make.
USAGE
}

cd "$(dirname "${BASH_SOURCE[0]}")"
MAKE=${MAKE:-make}
jobs=$(nproc 2>/dev/null || echo 1)

mode=release
if [ $# -gt 0 ]; then
    case $1 in
        -h|--help) usage; exit 0 ;;
        release|debug|all) mode=$1; shift ;;
        -*) echo "build.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
        # Anything else is a make target for the default mode.
    esac
fi

case $mode in
    release) set -- MODE=release release "$@" ;;
    debug)   set -- MODE=debug debug "$@" ;;
    all)     set -- release debug "$@" ;;
esac

echo "+ $MAKE -j$jobs $*"
exec "$MAKE" -j"$jobs" "$@"
