#!/bin/sh
# ensure-deb.sh EXECUTABLE PACKAGE WHAT: install Debian's PACKAGE when EXECUTABLE is missing and we
# may (root with apt-get); otherwise say how, and the tests that need it skip (fail under CI=true).
[ -x "$1" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Debian's $2 for $3…"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
else
  echo "Debian's $2 is missing: run 'sudo apt-get install $2' for $3." >&2
fi
exit 0
