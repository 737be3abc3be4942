#!/bin/sh
# Makes $RMM_DESIRED_VALUE (a user name) the owner of $RMM_PARAM_PATH.
[ -n "$RMM_DESIRED_VALUE" ] || { echo "no owner given" >&2; exit 1; }
exec chown -- "$RMM_DESIRED_VALUE" "$RMM_PARAM_PATH"
