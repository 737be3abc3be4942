#!/bin/sh
# Installs $RMM_PARAM_PACKAGE (at version $RMM_DESIRED_VALUE when the comparison is equals), or
# with RMM_COMPARISON=absent removes it, with apt-get.
export DEBIAN_FRONTEND=noninteractive
case $RMM_COMPARISON in
  absent) exec apt-get remove -y -- "$RMM_PARAM_PACKAGE" ;;
  equals) exec apt-get install -y -- "$RMM_PARAM_PACKAGE=$RMM_DESIRED_VALUE" ;;
  *) exec apt-get install -y -- "$RMM_PARAM_PACKAGE" ;;
esac
