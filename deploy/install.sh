#!/bin/sh
# Install gotyledon as a systemd service. Run as root from a clone:
#
#   deploy/install.sh [--root DIR] [--no-build]
#
#   --root DIR   install into DIR (an image or a chroot) instead of /
#   --no-build   do not build: install the binary named by $GOTYLEDON_BIN
#                (and the bridge named by $GOTYLEDON_JETSTREAM_BIN, and the
#                live view named by $GOTYLEDON_TOP_BIN, if set)
#
# It builds the binaries (static: CGO_ENABLED=0 go build -trimpath) and installs:
#   /usr/local/bin/gotyledon                  0755, replaced on every run
#   /usr/local/bin/gotyledon-jetstream        0755, replaced on every run (with
#                                             --no-build, if named): the
#                                             bridge that queues with
#                                             store: jetstream need
#   /usr/local/bin/gotyledon-top              0755, the same: the live view
#                                             gotyledon top runs
#   user and group gotyledon                  system ones, created if absent
#   /etc/systemd/system/gotyledon.service     0644, replaced on every run
#   /etc/gotyledon/gotyledon.yaml             0640 root:gotyledon, only if absent
# then, on a machine running systemd, reloads systemd. Running it again
# upgrades the binary and the unit; it never overwrites the config.
set -eu

usage() {
	echo "usage: $0 [--root DIR] [--no-build]   (--no-build takes the binary from \$GOTYLEDON_BIN)" >&2
	exit 2
}

root=/
build=yes
while [ $# -gt 0 ]; do
	case $1 in
	--root)
		[ $# -ge 2 ] || usage
		root=$2
		shift 2
		;;
	--root=*)
		root=${1#--root=}
		shift
		;;
	--no-build)
		build=no
		shift
		;;
	-h | --help) usage ;;
	*)
		echo "$0: unknown argument: $1" >&2
		usage
		;;
	esac
done

src=$(cd "$(dirname "$0")/.." && pwd)
case $root in
/*) ;;
*) echo "$0: --root needs an absolute path (got $root)" >&2; exit 2 ;;
esac
root=${root%/}
# $dest is the file system's prefix: "" for /, else the directory.
dest=$root
if [ "$(id -u)" -ne 0 ]; then
	echo "$0: run as root (it creates a system user and installs under ${root:-/})" >&2
	exit 1
fi

say() { echo "install.sh: $*"; }

# 1. The binary.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bridge=
top=
if [ "$build" = yes ]; then
	say "building $src/cmd/gotyledon, $src/cmd/gotyledon-jetstream and $src/cmd/gotyledon-top"
	(cd "$src" && CGO_ENABLED=0 go build -trimpath -o "$tmp/" ./cmd/gotyledon ./cmd/gotyledon-jetstream ./cmd/gotyledon-top)
	bin=$tmp/gotyledon
	bridge=$tmp/gotyledon-jetstream
	top=$tmp/gotyledon-top
else
	bridge=${GOTYLEDON_JETSTREAM_BIN:-}
	if [ -n "$bridge" ] && [ ! -x "$bridge" ]; then
		echo "$0: GOTYLEDON_JETSTREAM_BIN is not an executable gotyledon-jetstream binary: $bridge" >&2
		exit 2
	fi
	top=${GOTYLEDON_TOP_BIN:-}
	if [ -n "$top" ] && [ ! -x "$top" ]; then
		echo "$0: GOTYLEDON_TOP_BIN is not an executable gotyledon-top binary: $top" >&2
		exit 2
	fi
	bin=${GOTYLEDON_BIN:-}
	if [ -z "$bin" ] || [ ! -x "$bin" ]; then
		echo "$0: --no-build needs GOTYLEDON_BIN set to an executable gotyledon binary" >&2
		exit 2
	fi
fi
say "installing $bin to $dest/usr/local/bin/gotyledon"
install -D -m 0755 "$bin" "$dest/usr/local/bin/gotyledon"
if [ -n "$bridge" ]; then
	say "installing $bridge to $dest/usr/local/bin/gotyledon-jetstream"
	install -D -m 0755 "$bridge" "$dest/usr/local/bin/gotyledon-jetstream"
fi
if [ -n "$top" ]; then
	say "installing $top to $dest/usr/local/bin/gotyledon-top"
	install -D -m 0755 "$top" "$dest/usr/local/bin/gotyledon-top"
fi
# An older companion left in place would run beside the new binary.
warn_kept() { # warn_kept NAME VARIABLE VALUE
	if [ -z "$3" ] && [ -e "$dest/usr/local/bin/$1" ]; then
		say "WARNING: $dest/usr/local/bin/$1 is left as it was, and may be older than the binary just installed (set $2 to replace it)"
	fi
}
warn_kept gotyledon-jetstream GOTYLEDON_JETSTREAM_BIN "$bridge"
warn_kept gotyledon-top GOTYLEDON_TOP_BIN "$top"

# 2. The system group and user (no home, no login shell).
if [ -z "$dest" ]; then
	if getent group gotyledon >/dev/null; then
		say "group gotyledon exists"
	else
		say "creating the system group gotyledon"
		groupadd --system gotyledon
	fi
	if getent passwd gotyledon >/dev/null; then
		say "user gotyledon exists"
	else
		say "creating the system user gotyledon"
		useradd --system --gid gotyledon --no-create-home --home-dir /var/lib/gotyledon \
			--shell /usr/sbin/nologin --comment "gotyledon supervisor" gotyledon
	fi
elif [ -f "$dest/etc/passwd" ] && [ -f "$dest/etc/group" ]; then
	if grep -q '^gotyledon:' "$dest/etc/group"; then
		say "group gotyledon exists in $dest"
	else
		say "creating the system group gotyledon in $dest"
		groupadd --root "$dest" --system gotyledon
	fi
	if grep -q '^gotyledon:' "$dest/etc/passwd"; then
		say "user gotyledon exists in $dest"
	else
		say "creating the system user gotyledon in $dest"
		useradd --root "$dest" --system --gid gotyledon --no-create-home --home-dir /var/lib/gotyledon \
			--shell /usr/sbin/nologin --comment "gotyledon supervisor" gotyledon
	fi
else
	say "no $dest/etc/passwd or $dest/etc/group: not creating the user and group gotyledon (create them in the image before the first start)"
fi
# The group's number as the target system knows it (empty if it has none).
if [ -z "$dest" ]; then
	gid=$(getent group gotyledon | cut -d: -f3 || true)
else
	gid=$(awk -F: '$1 == "gotyledon" { print $3 }' "$dest/etc/group" 2>/dev/null || true)
fi

# 3. The unit. Local changes belong in drop-ins (systemctl edit gotyledon).
unit=$dest/etc/systemd/system/gotyledon.service
if [ -f "$unit" ] && cmp -s "$src/deploy/gotyledon.service" "$unit"; then
	say "$unit is up to date"
else
	say "installing the unit to $unit"
	install -D -m 0644 "$src/deploy/gotyledon.service" "$unit"
fi

# 4. The config: the example, only if there is none.
conf=$dest/etc/gotyledon/gotyledon.yaml
if [ ! -d "$dest/etc/gotyledon" ]; then
	say "creating $dest/etc/gotyledon"
	install -d -m 0755 "$dest/etc/gotyledon"
fi
if [ -e "$conf" ] || [ -L "$conf" ]; then
	say "keeping the existing $conf (the example is $src/deploy/gotyledon.yaml)"
else
	say "installing the example config to $conf"
	install -m 0640 "$src/deploy/gotyledon.yaml" "$conf"
	if [ -n "$gid" ]; then
		chown "0:$gid" "$conf"
	else
		say "no group gotyledon: $conf is root:root 0640, unreadable to the service until you chgrp it"
	fi
fi

# 5. systemd, when it runs this machine.
if [ -n "$dest" ]; then
	say "done; installed under $dest"
	exit 0
fi
if [ -d /run/systemd/system ]; then
	say "systemctl daemon-reload"
	systemctl daemon-reload
else
	say "systemd is not running here: skipping systemctl daemon-reload"
fi
if /usr/local/bin/gotyledon check --config "$conf"; then :; else
	say "WARNING: $conf does not pass the check above; fix it before starting the service"
fi
cat <<EOF
install.sh: done. Next:
  edit $conf
  gotyledon check -c $conf
  systemctl enable --now gotyledon    (start now and at boot)
  systemctl reload gotyledon          (after an edit of the config)
  systemctl status gotyledon          (state and the manager's summary)
  journalctl -u gotyledon -f          (the manager's and the workers' logs)
  gotyledon status                    (the workers, from the control socket)
  gotyledon top                       (the same, live; keys scale, restart, reload)
  usermod -aG gotyledon USER          (lets USER use the sockets)
EOF
