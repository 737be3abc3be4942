#!/bin/sh
# Enables, disables or masks $RMM_PARAM_UNIT as $RMM_DESIRED_VALUE says (enablement only: a
# running unit is not started or stopped).
case $RMM_DESIRED_VALUE in
  enabled) exec systemctl enable -- "$RMM_PARAM_UNIT" ;;
  disabled) exec systemctl disable -- "$RMM_PARAM_UNIT" ;;
  masked) exec systemctl mask -- "$RMM_PARAM_UNIT" ;;
  *) echo "can set enabled, disabled or masked, not: $RMM_DESIRED_VALUE" >&2; exit 1 ;;
esac
