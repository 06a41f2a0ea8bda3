#!/usr/bin/env bash
# Builds dist/walship-deno, a single binary on the Deno runtime, with
# `deno compile`. Usage: npm run build:deno [-- <deno target>...]
# (targets: x86_64-unknown-linux-gnu, aarch64-unknown-linux-gnu,
# x86_64-apple-darwin, aarch64-apple-darwin, x86_64-pc-windows-msvc;
# a target other than this machine's writes dist/walship-deno-<target>).
#
# NEEDS NETWORK: `deno compile` downloads the Deno runtime it embeds
# (denort-<target>.zip from dl.deno.land, cached in DENO_DIR afterwards);
# unlike deno itself, denort is not published on npm. Offline, point
# DENORT_BIN at a denort binary of the same version as node_modules/.bin/deno
# (unzipped from that release). `npm run build` (bun) needs no download.
#
# The code is first bundled into one file (deno bundle), so the binary embeds
# walship and its dependencies only, not the whole node_modules tree.
# Type checking is `deno check`, as in npm test.
set -euo pipefail
cd "$(dirname "$0")/.."

DENO=node_modules/.bin/deno
version="$("$DENO" --version | awk 'NR==1 { print $2 }')"
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) host=x86_64-unknown-linux-gnu ;;
  Linux-aarch64) host=aarch64-unknown-linux-gnu ;;
  Darwin-x86_64) host=x86_64-apple-darwin ;;
  Darwin-arm64) host=aarch64-apple-darwin ;;
  *) host=unknown ;;
esac
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("$host")

mkdir -p dist
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$DENO" bundle --quiet --platform deno --minify -o "$work/walship.js" src/cli/main.ts

for target in "${targets[@]}"; do
  out=dist/walship-deno
  [ "$target" != "$host" ] && out="dist/walship-deno-$target"
  echo "== deno compile ($target) -> $out"
  # --no-config: the bundle needs neither deno.json nor node_modules.
  if ! (cd "$work" && "$OLDPWD/$DENO" compile --quiet -A --no-check --no-config --target "$target" \
    --output "$OLDPWD/$out" walship.js) 2>"$work/compile.log"; then
    if grep -qiE "dl\.deno\.land|error sending request|dns error|Download" "$work/compile.log"; then
      echo "walship: deno compile needs network access to dl.deno.land to download the Deno runtime (denort $version for $target); run it online once (it is cached), or set DENORT_BIN to a denort binary" >&2
    else
      cat "$work/compile.log" >&2
      echo "walship: deno compile failed for $target" >&2
    fi
    rm -f "$out"
    exit 1
  fi
  if [ "$target" = "$host" ]; then
    # A deno binary given as DENORT_BIN compiles "fine" but runs as deno itself.
    if ! v="$("$out" --version 2>&1)" || [[ "$v" != walship/* ]]; then
      echo "walship: $out does not run walship (DENORT_BIN must be denort, not deno): ${v%%$'\n'*}" >&2
      rm -f "$out"
      exit 1
    fi
    echo "   runs here: $v"
  fi
  echo "   $(file -b "$out" | cut -d, -f1-2)"
done
