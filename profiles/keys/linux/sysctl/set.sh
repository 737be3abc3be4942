#!/bin/sh
# Sets kernel parameter $RMM_PARAM_NAME to $RMM_DESIRED_VALUE with sysctl -w (or, under
# $RMM_PARAM_PROC_ROOT, writes the file that stands for it).
case $RMM_PARAM_NAME in
  ""|*/*|*..*|.*) echo "not a parameter name: $RMM_PARAM_NAME" >&2; exit 2 ;;
esac
if [ -n "$RMM_PARAM_PROC_ROOT" ]; then
  printf '%s\n' "$RMM_DESIRED_VALUE" > "$RMM_PARAM_PROC_ROOT/$(printf '%s' "$RMM_PARAM_NAME" | tr . /)"
else
  exec sysctl -w "$RMM_PARAM_NAME=$RMM_DESIRED_VALUE"
fi
