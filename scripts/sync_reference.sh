#!/usr/bin/env bash
# Copies the project's shared reference data (fixtures, layouts and their README) into tests/reference, the copy
# the tests read, so that a clone tests itself. Usage: bash scripts/sync_reference.sh [/path/to/shared]
# (default ../shared). Prints what it added or changed; commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-../shared}/reference
[ -d "$SRC/fixtures" ] || { echo "sync_reference: no reference data at $SRC (expected $SRC/fixtures)" >&2; exit 2; }
for sub in fixtures layouts; do
  mkdir -p "tests/reference/$sub"
  for f in "$SRC/$sub"/*; do
    dst="tests/reference/$sub/$(basename "$f")"
    if ! cmp -s "$f" "$dst"; then
      echo "${dst}$([ -e "$dst" ] && echo " (changed)" || echo " (new)")"
      cp "$f" "$dst" && chmod u+w "$dst"
    fi
  done
done
# the README keeps argen's header comment (first block) above the shared text
{ sed -n '1,/-->/p' tests/reference/README.md; echo; cat "$SRC/README.md"; } > tests/reference/README.md.new
if ! cmp -s tests/reference/README.md.new tests/reference/README.md; then echo "tests/reference/README.md (changed)"; fi
mv tests/reference/README.md.new tests/reference/README.md
