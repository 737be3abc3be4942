#!/bin/sh
# The browser test drives Debian's chromium (never a downloaded browser). Install it when
# missing and we may; otherwise say how, and the browser test will report it as missing.
[ -x /usr/bin/chromium ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Debian's chromium for the browser test…"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "Debian's chromium is missing: run 'sudo apt-get install chromium' for the browser test." >&2
fi
exit 0
