#!/bin/sh
# Starts or stops $RMM_PARAM_UNIT as $RMM_DESIRED_VALUE says (active or inactive; its enablement
# is linux.systemd_unit_enabled's). Only `equals` names a state to set: other comparisons are
# refused (2).
[ "$RMM_COMPARISON" = equals ] || { echo "can set a state for equals only, not $RMM_COMPARISON" >&2; exit 2; }
case $RMM_DESIRED_VALUE in
  active) exec systemctl start -- "$RMM_PARAM_UNIT" ;;
  inactive) exec systemctl stop -- "$RMM_PARAM_UNIT" ;;
  *) echo "can set active or inactive, not: $RMM_DESIRED_VALUE" >&2; exit 1 ;;
esac
