#!/bin/sh
# Sets the mode of $RMM_PARAM_PATH to $RMM_DESIRED_VALUE (octal).
case $RMM_DESIRED_VALUE in
  ""|*[!0-7]*) echo "not an octal mode: $RMM_DESIRED_VALUE" >&2; exit 1 ;;
esac
exec chmod -- "$RMM_DESIRED_VALUE" "$RMM_PARAM_PATH"
