#!/bin/sh
# Prints the value of the first "Key Value" line of $RMM_PARAM_PATH whose key is $RMM_PARAM_KEY
# (compared case-insensitively, as sshd reads its configuration; comment lines skipped).
# Exit 3: the file or the line is absent.
[ -f "$RMM_PARAM_PATH" ] || exit 3
awk '
  BEGIN { want = tolower(ENVIRON["RMM_PARAM_KEY"]); found = 0 }
  /^[ \t]*#/ { next }
  tolower($1) == want {
    value = $0
    sub(/^[ \t]*[^ \t]+[ \t]*/, "", value)
    sub(/[ \t\r]+$/, "", value)
    print value
    found = 1
    exit
  }
  END { exit found ? 0 : 3 }
' "$RMM_PARAM_PATH"
