#!/bin/sh
# Prints the octal mode of $RMM_PARAM_PATH (stat -c %a). Exit 3: the path is absent.
[ -e "$RMM_PARAM_PATH" ] || exit 3
exec stat -c %a -- "$RMM_PARAM_PATH"
