#!/bin/sh
# Regenerates the expected images from vectors.txt with ESP-IDF's spiffsgen.py.
# usage: SPIFFSGEN=path/to/spiffsgen.py sh generate.sh   (run inside testdata)
set -eu
: "${SPIFFSGEN:?set SPIFFSGEN to the path of ESP-IDF v5.5.5 components/spiffs/spiffsgen.py}"
PYTHON=${PYTHON:-python3}
empty=$(mktemp -d)
trap 'rmdir "$empty"' EXIT
grep -v '^#' vectors.txt | while read -r name input size flags; do
	[ -n "$name" ] || continue
	dir=in/$input
	[ "$input" = - ] && dir=$empty
	# shellcheck disable=SC2086 # flags are meant to split
	"$PYTHON" sortedwalk.py "$SPIFFSGEN" $flags "$size" "$dir" "$name.bin"
	gzip -n -9 -f "$name.bin"
done
