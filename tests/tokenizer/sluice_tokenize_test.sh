#!/usr/bin/env bash
# End-to-end test of the sluice-tokenize tool: JSON Lines in, JSON Lines out,
# one output line per input line, malformed lines answered with {"error": ...}
# without stopping, and ids/text equal to the HF fixtures.
# Usage: sluice_tokenize_test.sh TOOL SHARED_TOKENIZERS_DIR TEST_DATA_DIR
set -euo pipefail
tool=$1
shared=$2
data=$3

for name in qwen3 llama2; do
  if [[ ! -f "$shared/$name/tokenizer.json" ]]; then
    echo "SKIPPED: $shared/$name/tokenizer.json not found (CI copies shared/ beside the checkout)"
    exit 0
  fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

# Corpus lines 7-12 (plain and whitespace-heavy text) with two bad lines in
# the middle: one that is not JSON and one without "text".
corpus_lines=(7 8 9 10 11 12)
{
  sed -n '7,9p' "$data/corpus.jsonl"
  echo 'this is not json'
  echo '{"ids": [1, 2]}'
  sed -n '10,12p' "$data/corpus.jsonl"
} > "$work/in.jsonl"
expected_ids() {  # fixture file, line number, field
  sed -n "${2}p" "$1" | grep -o "\"$3\":\[[^]]*\]" | sed "s/^\"$3\"/\"ids\"/"
}

for mode in plain special; do
  name=qwen3
  field=ids
  flags=()
  if [[ $mode == special ]]; then
    name=llama2  # its post-processor adds <s>
    field=ids_special
    flags=(--add-special-tokens)
  fi
  "$tool" --tokenizer "$shared/$name" "${flags[@]}" < "$work/in.jsonl" > "$work/out.jsonl"
  [[ $(wc -l < "$work/out.jsonl") -eq 8 ]] || fail "$name: expected 8 output lines"
  out_line=1
  for n in "${corpus_lines[@]}"; do
    [[ $out_line -eq 4 ]] && out_line=6  # skip the two bad input lines
    got=$(sed -n "${out_line}p" "$work/out.jsonl")
    want="{$(expected_ids "$data/$name.jsonl" "$n" "$field")}"
    [[ "$got" == "$want" ]] || fail "$name $mode corpus line $n: got $got want $want"
    out_line=$((out_line + 1))
  done
  for bad in 4 5; do
    sed -n "${bad}p" "$work/out.jsonl" | grep -q '^{"error":' || fail "$name: line $bad is not an error"
  done
done

# Decode: fixture ids back to the corpus text, plus an out-of-range id.
for n in "${corpus_lines[@]}"; do
  echo "{$(expected_ids "$data/qwen3.jsonl" "$n" ids)}"
done > "$work/ids.jsonl"
echo '{"ids": [-5]}' >> "$work/ids.jsonl"
"$tool" --tokenizer "$shared/qwen3" --decode < "$work/ids.jsonl" > "$work/text.jsonl"
out_line=1
for n in "${corpus_lines[@]}"; do
  got=$(sed -n "${out_line}p" "$work/text.jsonl")
  want=$(sed -n "${n}p" "$data/corpus.jsonl" | sed 's/^{"text": /{"text":/')
  [[ "$got" == "$want" ]] || fail "decode corpus line $n: got $got want $want"
  out_line=$((out_line + 1))
done
sed -n '7p' "$work/text.jsonl" | grep -q '^{"error":' || fail "bad id did not give an error"

# A missing tokenizer directory is a load error with a non-zero exit.
if "$tool" --tokenizer "$work/nonexistent" < /dev/null > /dev/null 2>&1; then
  fail "missing tokenizer directory should fail"
fi

if [[ $failures -ne 0 ]]; then
  echo "$failures failure(s)" >&2
  exit 1
fi
echo "sluice-tokenize: all checks passed"
