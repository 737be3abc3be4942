#!/bin/sh
# Prints the value of kernel parameter $RMM_PARAM_NAME from ${RMM_PARAM_PROC_ROOT:-/proc/sys}
# (whitespace between fields made one space). Exit 3: no such parameter. Exit 2: a bad name.
case $RMM_PARAM_NAME in
  ""|*/*|*..*|.*) echo "not a parameter name: $RMM_PARAM_NAME" >&2; exit 2 ;;
esac
file="${RMM_PARAM_PROC_ROOT:-/proc/sys}/$(printf '%s' "$RMM_PARAM_NAME" | tr . /)"
[ -f "$file" ] || exit 3
tr -s ' \t' '  ' < "$file" | sed -n '1s/^ *//; 1s/ *$//; 1p'
