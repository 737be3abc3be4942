#!/bin/sh
# Prints the installed version of Debian package $RMM_PARAM_PACKAGE. Exit 3: not installed.
status=$(dpkg-query -W -f='${Status}' -- "$RMM_PARAM_PACKAGE" 2>/dev/null) || exit 3
case $status in
  *" installed") exec dpkg-query -W -f='${Version}\n' -- "$RMM_PARAM_PACKAGE" ;;
  *) exit 3 ;;
esac
