#!/bin/sh
# Build the agent's Debian package (docs/agent.md, "Install"): make agent-deb.
# PKG and VERSION name the package (tests install a uniquely named one and purge it); the
# install root is /opt/$PKG, the unit $PKG.service, the settings /etc/default/$PKG.
# The last line printed is the path of the .deb.
set -eu
PKG=${PKG:-rmm-agent}
VERSION=${VERSION:-$(python3 -c 'import rmm_agent; print(rmm_agent.__version__)')}
OUT=${OUT:-dist}
ROOT=/opt/$PKG
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT

mkdir -p "$BUILD/DEBIAN" "$BUILD$ROOT/versions/$VERSION" "$BUILD/lib/systemd/system" "$BUILD/etc/default"
tar -c --exclude=__pycache__ --exclude='*.pyc' rmm_agent | tar -x -C "$BUILD$ROOT/versions/$VERSION"
# The package's version is the agent's: the code says so too.
sed -i "s/^__version__ = .*/__version__ = \"$VERSION\"/" "$BUILD$ROOT/versions/$VERSION/rmm_agent/__init__.py"
sed -e "s#/opt/rmm-agent#$ROOT#g" -e "s#/etc/default/rmm-agent#/etc/default/$PKG#g" -e "s#/var/lib/rmm-agent#/var/lib/$PKG#g" \
    packaging/rmm-agent.service >"$BUILD/lib/systemd/system/$PKG.service"
sed -e "s#/opt/rmm-agent#$ROOT#g" -e "s#/var/lib/rmm-agent#/var/lib/$PKG#g" -e "s#systemctl start rmm-agent#systemctl start $PKG#" \
    packaging/default >"$BUILD/etc/default/$PKG"
cat >"$BUILD/DEBIAN/control" <<CONTROL
Package: $PKG
Version: $VERSION
Architecture: all
Maintainer: RMM project <rmm@localhost>
Depends: python3 (>= 3.11), python3-cryptography
Section: admin
Priority: optional
Description: RMM endpoint agent
 Enrolls with the RMM server, reports facts, runs signed instructions and
 updates itself from signed releases (versions/ and the current symlink).
CONTROL
echo "/etc/default/$PKG" >"$BUILD/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    sed -e "s#@ROOT@#$ROOT#g" -e "s#@PKG@#$PKG#g" -e "s#@VERSION@#$VERSION#g" \
        "packaging/$script" >"$BUILD/DEBIAN/$script"
    chmod 0755 "$BUILD/DEBIAN/$script"
done
find "$BUILD" -type d -exec chmod 0755 {} +
mkdir -p "$OUT"
DEB="$OUT/${PKG}_${VERSION}_all.deb"
dpkg-deb --root-owner-group -Zgzip --build "$BUILD" "$DEB" >/dev/null
echo "$(cd "$OUT" && pwd)/$(basename "$DEB")"
