#!/bin/sh
# Prints `systemctl is-active` of $RMM_PARAM_UNIT (it exits non-zero for a unit that is not active:
# its output is the value). Exit 3: no such unit (its LoadState is not-found; is-active alone says
# "inactive" for those). Exit 2: no unit named; 4: systemctl could not answer (no systemd running).
[ -n "$RMM_PARAM_UNIT" ] || { echo "unit is required" >&2; exit 2; }
load=$(systemctl show --property=LoadState --value -- "$RMM_PARAM_UNIT") || exit 4
if [ "$load" = not-found ]; then exit 3; fi
state=$(systemctl is-active -- "$RMM_PARAM_UNIT")
[ -n "$state" ] || exit 4
printf '%s\n' "$state"
