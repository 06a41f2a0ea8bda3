#!/usr/bin/env bash
# Builds a walship binary for every platform bun can cross-compile to:
# dist/walship-<target> for each target below (or those named as arguments),
# plus dist/SHA256SUMS. Usage: npm run build:all [-- linux-arm64 darwin-arm64 ...]
#
# Cross-compiling needs the bun runtime of each target, the npm package
# @oven/bun-<os>-<arch> of the same version as node_modules/.bin/bun. This
# script fetches it with `npm pack` (so it follows the npm registry and proxy
# settings, like `npm install`), keeps it in node_modules/.cache/walship-bun/,
# and hands it to bun with --compile-executable-path: after the first run the
# build works offline. linux-x64 needs nothing: it is the bun that builds.
#
# Afterwards each binary is smoke-tested with `--version` where this machine
# can run it: natively, under qemu-<arch>-static (Debian: qemu-user-static
# and libc6-<arch>-cross), or through musl's loader (Debian: musl).
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS=(linux-x64 linux-x64-baseline linux-arm64 linux-x64-musl linux-arm64-musl darwin-arm64 darwin-x64)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${ALL_TARGETS[@]}")

BUN=node_modules/.bin/bun
version="$("$BUN" --version)"
cache="node_modules/.cache/walship-bun/$version"
mkdir -p dist "$cache"

# The npm package holding bun for a target: arm64 is "aarch64" there.
package_of() {
  local t="$1"
  echo "@oven/bun-${t/arm64/aarch64}"
}

# Prints the path of the bun runtime for target $1, fetching it once.
runtime_of() {
  local t="$1" pkg exe dir tmp
  pkg="$(package_of "$t")"
  exe=bun
  [[ "$t" == windows-* ]] && exe=bun.exe
  dir="$cache/${pkg#@oven/}"
  if [ ! -x "$dir/$exe" ]; then
    tmp="$(mktemp -d)"
    echo "   fetching $pkg@$version (npm pack)" >&2
    if ! (cd "$tmp" && npm pack --silent "$pkg@$version" >/dev/null 2>"$tmp/npm.log"); then
      echo "walship: cannot fetch $pkg@$version from the npm registry (needed to cross-compile for $t): $(grep -m1 -i error "$tmp/npm.log" || tail -n1 "$tmp/npm.log")" >&2
      rm -rf "$tmp"
      return 1
    fi
    mkdir -p "$dir"
    tar -xzf "$tmp"/*.tgz -C "$tmp"
    mv "$tmp/package/bin/$exe" "$dir/$exe"
    chmod +x "$dir/$exe"
    rm -rf "$tmp"
  fi
  echo "$dir/$exe"
}

host_is_musl() { ldd --version 2>&1 | grep -qi musl; }

# How this machine can run a binary for target $1 (prints a command prefix), or fails.
runner_of() {
  local t="$1" host_arch
  host_arch="$(uname -m)"
  [ "$(uname -s)" = Linux ] || return 1
  case "$t" in
    linux-x64|linux-x64-baseline) [ "$host_arch" = x86_64 ] && echo "" && return 0 ;;
    # musl builds need musl's libstdc++ too (Alpine: apk add libstdc++), so only on a musl system.
    linux-x64-musl) [ "$host_arch" = x86_64 ] && host_is_musl && echo "" && return 0 ;;
    linux-arm64)
      [ "$host_arch" = aarch64 ] && echo "" && return 0
      command -v qemu-aarch64-static >/dev/null && [ -d /usr/aarch64-linux-gnu ] &&
        echo "qemu-aarch64-static -L /usr/aarch64-linux-gnu" && return 0 ;;
    linux-arm64-musl) [ "$host_arch" = aarch64 ] && host_is_musl && echo "" && return 0 ;;
  esac
  return 1
}

failed=()
for t in "${targets[@]}"; do
  out="dist/walship-$t"
  echo "== $t -> $out"
  exe_path=()
  if [ "$t" != "$(uname -s | tr A-Z a-z)-$(uname -m | sed 's/x86_64/x64/;s/aarch64/arm64/')" ]; then
    if ! runtime="$(runtime_of "$t")"; then
      failed+=("$t")
      continue
    fi
    exe_path=(--compile-executable-path="$runtime")
  fi
  if ! "$BUN" build --compile --minify --bytecode --format=esm --target="bun-$t" "${exe_path[@]}" \
    src/cli/main.ts --outfile "$out" >/dev/null; then
    echo "walship: bun could not build $out" >&2
    failed+=("$t")
    continue
  fi
  echo "   $(file -b "$out" | cut -d, -f1-3)"
  if runner="$(runner_of "$t")"; then
    # shellcheck disable=SC2086 # the runner is a command prefix
    if v="$($runner "$out" --version 2>&1)"; then
      echo "   runs here: $v"
    else
      echo "   walship: $out does not run here: $v" >&2
      failed+=("$t")
    fi
  else
    echo "   not run: this machine cannot execute $t binaries"
  fi
done

(cd dist && sha256sum walship-* | grep -v '\.tmp' >SHA256SUMS)
echo "== dist/SHA256SUMS"
cat dist/SHA256SUMS
if [ ${#failed[@]} -gt 0 ]; then
  echo "walship: failed for ${failed[*]}" >&2
  exit 1
fi
