# Sourced by the end-to-end tests: small_corpus CTL DIR writes a small corpus of English-like
# "documents" and prepares it with `raptrctl data prepare` (vocabulary 300) into DIR/data.
small_corpus() {
  local ctl=$1 dir=$2
  mkdir -p "$dir/text"
  for d in 1 2 3 4; do
    for i in $(seq 1 150); do
      echo "Document $d line $i: the state of the union is strong, said speaker number $((i * d % 17)) to the congress; taxes, trade and peace were discussed at length."
    done > "$dir/text/doc$d.txt"
  done
  "$ctl" data prepare --input "$dir/text" --out "$dir/data" --vocab-size 300 --val-fraction 0.25 \
    2> "$dir/prepare.log"
}
