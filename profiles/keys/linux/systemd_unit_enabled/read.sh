#!/bin/sh
# Prints `systemctl is-enabled` of $RMM_PARAM_UNIT (it exits non-zero for disabled units: its
# output is the value). Exit 3: no such unit.
state=$(systemctl is-enabled -- "$RMM_PARAM_UNIT" 2>/dev/null)
case $state in
  ""|not-found) exit 3 ;;
esac
printf '%s\n' "$state"
