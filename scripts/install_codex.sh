#!/usr/bin/env bash
# Install the real Codex CLI (default 0.133.0) into a project-local directory and print the
# path of its native binary on stdout (one line; everything else goes to stderr).
#
# Used by CI and by tests/interop and benchmarks/ to compare our exec-server against the
# real one.  Idempotent: when the binary is already there and reports the wanted version,
# nothing is downloaded.
#
#   scripts/install_codex.sh                 # -> .interop/codex-0.133.0/.../bin/codex
#   CODEX_VERSION=0.137.0 scripts/install_codex.sh
#   CODEX_INTEROP_DIR=/some/dir scripts/install_codex.sh
#
# The tests look in .interop/codex-<version>/ or use $CODEX_0133_BIN / $CODEX_0171_BIN.
set -euo pipefail

version="${CODEX_VERSION:-0.133.0}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${CODEX_INTEROP_DIR:-$repo_root/.interop/codex-$version}"

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) pkg="codex-linux-x64" triple="x86_64-unknown-linux-musl" ;;
    Linux-aarch64 | Linux-arm64) pkg="codex-linux-arm64" triple="aarch64-unknown-linux-musl" ;;
    Darwin-x86_64) pkg="codex-darwin-x64" triple="x86_64-apple-darwin" ;;
    Darwin-arm64) pkg="codex-darwin-arm64" triple="aarch64-apple-darwin" ;;
    *)
        echo "install_codex.sh: unsupported platform $(uname -s)-$(uname -m)" >&2
        exit 2
        ;;
esac

bin="$dest/node_modules/@openai/$pkg/vendor/$triple/bin/codex"

installed_ok() {
    [[ -x "$bin" ]] && "$bin" --version 2>/dev/null | grep -qF "$version"
}

if ! installed_ok; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "install_codex.sh: npm not found; install Node.js (>= 16) first" >&2
        exit 1
    fi
    mkdir -p "$dest"
    # A private package.json pins the exact version, so `npm install` never floats to a
    # newer release and never touches the project's own files.
    cat >"$dest/package.json" <<EOF
{
  "private": true,
  "description": "Real Codex CLI for exec-server interop tests and benchmarks",
  "dependencies": { "@openai/codex": "$version" }
}
EOF
    echo "install_codex.sh: installing @openai/codex@$version into $dest" >&2
    (cd "$dest" && npm install --no-audit --no-fund --loglevel=error >&2)
    if ! installed_ok; then
        echo "install_codex.sh: expected binary missing or wrong version: $bin" >&2
        exit 1
    fi
fi

echo "$bin"
