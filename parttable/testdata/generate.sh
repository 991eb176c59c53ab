#!/bin/sh
# Regenerates the expected binaries from ESP-IDF v5.5.5's own tool and checks
# that the tool refuses every table under errors/. Usage, from this directory:
#   sh generate.sh "$IDF_PATH/components/partition_table/gen_esp32part.py"
set -eu
gen=$1
grep -v '^#' vectors.txt | while read -r out in args; do
	# shellcheck disable=SC2086 # args holds several options
	python3 "$gen" -q "$in" "$out" $args
	python3 "$gen" -q "$out" "${out%.bin}.back.csv" $args
done
for f in errors/*.csv; do
	if python3 "$gen" -q --flash-size 4MB "$f" /dev/null 2>/dev/null; then
		echo "$f: the tool accepted it" >&2
		exit 1
	fi
done
