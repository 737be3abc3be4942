#!/bin/sh
# Makes the first "Key Value" line of $RMM_PARAM_PATH for $RMM_PARAM_KEY (the one sshd reads)
# read $RMM_DESIRED_VALUE, appended when there is none; with RMM_COMPARISON=absent, removes every
# such line. Other lines stay as they are; the file keeps its mode and owner (rewritten in place).
set -e
[ -f "$RMM_PARAM_PATH" ] || { echo "no such file: $RMM_PARAM_PATH" >&2; exit 1; }
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
awk '
  BEGIN {
    key = ENVIRON["RMM_PARAM_KEY"]; want = tolower(key)
    line = key " " ENVIRON["RMM_DESIRED_VALUE"]; drop = ENVIRON["RMM_COMPARISON"] == "absent"
  }
  !/^[ \t]*#/ && tolower($1) == want {
    if (drop) next
    if (!done) { print line; done = 1; next }
  }
  { print }
  END { if (!drop && !done) print line }
' "$RMM_PARAM_PATH" > "$tmp"
cat "$tmp" > "$RMM_PARAM_PATH"
