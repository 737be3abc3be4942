#!/bin/sh
# Prints the owner's user name of $RMM_PARAM_PATH (stat -c %U). Exit 3: the path is absent.
[ -e "$RMM_PARAM_PATH" ] || exit 3
exec stat -c %U -- "$RMM_PARAM_PATH"
