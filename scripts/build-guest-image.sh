#!/usr/bin/env bash
# Builds the small guest disk image the end-to-end tests boot as a VM: Debian's cloud kernel
# plus an initramfs holding busybox-static and scripts/guest/init, on an isohybrid ISO that
# SeaBIOS boots as a plain hard disk (so it works from `-drive ...,if=virtio`, no direct
# kernel boot), converted to qcow2. The guest takes DHCP on eth0, reads the metadata service
# at 169.254.169.254, runs its user data, serves http on port 80 and reports each step on
# ttyS0 as "ZSTACK-GUEST: ..." lines (see scripts/guest/README).
#
#   scripts/build-guest-image.sh [--force] [OUTPUT]   default OUTPUT: build/guest/zstack-test-guest.qcow2
#   scripts/build-guest-image.sh --print-packages     the host packages this script needs
#
# Host packages it needs (installed here if missing):
#   isolinux syslinux-common xorriso cpio gzip kmod qemu-utils
# Guest packages it only downloads (`apt-get download`, unpacked with `dpkg-deb -x`, never
# installed on the host, so the host's /boot and busybox are left alone); cached under
# /var/cache/zstack-tests/guest-debs:
#   linux-image-cloud-amd64 (the versioned linux-image-*-cloud-amd64 it depends on) busybox-static
#
# Re-running is cheap: when OUTPUT exists and is newer than this script and the guest's init,
# nothing is rebuilt. --force rebuilds anyway.
set -euo pipefail

HOST_PACKAGES="isolinux syslinux-common xorriso cpio gzip kmod qemu-utils"
KERNEL_META=${GUEST_KERNEL_PACKAGE:-linux-image-cloud-amd64}
BUSYBOX_PACKAGE=busybox-static
# Kept minimal: quiet boot, and no CPU-bug mitigations, which only cost time under TCG.
# panic=5: should init ever die, reboot rather than hang with a silent console.
CMDLINE="console=ttyS0 quiet mitigations=off panic=5"
# What the guest loads, by module name; their dependencies come from modules.dep.
# virtio_pci: the PCI transport; virtio_net: eth0; virtio_blk: lets user data see its disks;
# button + evdev: the ACPI power button and its /dev/input node, so `virsh shutdown` works.
MODULES="virtio_pci virtio_net virtio_blk button evdev"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF=$ROOT/scripts/build-guest-image.sh
INIT=$ROOT/scripts/guest/init
DEB_CACHE=/var/cache/zstack-tests/guest-debs

usage() {
    echo "usage: $0 [--force] [OUTPUT]    (default OUTPUT: build/guest/zstack-test-guest.qcow2)" >&2
    echo "       $0 --print-packages" >&2
    exit 2
}

force=0
out=
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --print-packages) echo "packages: $HOST_PACKAGES"; exit 0 ;;
        -h|--help) usage ;;
        -*) echo "unknown option: $arg" >&2; usage ;;
        *) [ -z "$out" ] || usage; out=$arg ;;
    esac
done
out=${out:-$ROOT/build/guest/zstack-test-guest.qcow2}
case "$out" in /*) ;; *) out=$PWD/$out ;; esac

report() {
    local bytes
    bytes=$(stat -c %s "$out")
    echo "guest image: $out ($bytes bytes, $(numfmt --to=iec "$bytes"))"
}

# --- up to date? ----------------------------------------------------------------------------
if [ "$force" = 0 ] && [ -s "$out" ] && [ "$out" -nt "$SELF" ] && [ "$out" -nt "$INIT" ]; then
    report
    exit 0
fi

# --- host tools -----------------------------------------------------------------------------
export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_update_once() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update -q >/dev/null
        apt_updated=1
    fi
}
missing=()
for p in $HOST_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing missing packages: ${missing[*]}"
    apt_update_once
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- guest packages: download only ----------------------------------------------------------
# Prints the path of PACKAGE's candidate .deb, downloading it into the cache if needed.
# `apt-get download` never installs anything; the cache makes --force rebuilds offline-fast.
fetch_deb() {
    local pkg=$1 ver file
    ver=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
        apt_update_once
        ver=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
    fi
    if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
        echo "no Debian package $pkg" >&2
        return 1
    fi
    # apt-get download names the file with the epoch's ':' escaped as %3a.
    file=$DEB_CACHE/${pkg}_${ver//:/%3a}_amd64.deb
    if [ ! -s "$file" ]; then
        echo "downloading $pkg $ver" >&2
        # Sandbox::User=root: the cache is root's, not _apt's; we only download here.
        (cd "$DEB_CACHE" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >/dev/null)
    fi
    echo "$file"
}

mkdir -p "$DEB_CACHE"
# linux-image-cloud-amd64 is a metapackage: the kernel is in the versioned package it depends on.
apt-cache show "$KERNEL_META" >/dev/null 2>&1 || apt_update_once
kernel_pkg=$(apt-cache depends "$KERNEL_META" | awk '/Depends: linux-image-/ {print $2; exit}')
[ -n "$kernel_pkg" ] || { echo "cannot resolve the kernel package behind $KERNEL_META" >&2; exit 1; }
kernel_deb=$(fetch_deb "$kernel_pkg")
busybox_deb=$(fetch_deb "$BUSYBOX_PACKAGE")

work=$(mktemp -d "${TMPDIR:-/tmp}/zstack-guest.XXXXXX")
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$kernel_deb" "$work/kernel"
dpkg-deb -x "$busybox_deb" "$work/busybox"
kver=$(ls "$work/kernel/lib/modules")
vmlinuz=$work/kernel/boot/vmlinuz-$kver
[ -f "$vmlinuz" ] || { echo "no vmlinuz in $kernel_deb" >&2; exit 1; }
echo "building the guest image: $kernel_pkg, $BUSYBOX_PACKAGE $(dpkg-deb -f "$busybox_deb" Version)"

# --- initramfs ------------------------------------------------------------------------------
rd=$work/initramfs
mkdir -p "$rd"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,root,etc/acpi,www,lib/modules}
cp "$work/busybox/bin/busybox" "$rd/bin/busybox"
# One symlink per applet, made here rather than with `busybox --install` at boot: it costs
# nothing at run time and the layout is fixed in the image.
"$rd/bin/busybox" --list-full | while read -r applet; do
    [ "$applet" = bin/busybox ] || ln -sf /bin/busybox "$rd/$applet"
done
# User data written for a usual Linux guest often starts with #!/bin/bash: let busybox's
# ash run it (it covers the common subset of bash). A wrapper, not a symlink: busybox picks
# the applet by argv[0], and has none called bash.
printf '#!/bin/sh\nexec /bin/sh "$@"\n' >"$rd/bin/bash"
chmod 755 "$rd/bin/bash"
install -m 0755 "$INIT" "$rd/init"
# The kernel opens /dev/console for init before /init can mount devtmpfs. Its built-in
# initramfs already has that node, but add it in case mknod is allowed here (as root it is).
mknod -m 600 "$rd/dev/console" c 5 1 2>/dev/null || true
echo "root:x:0:0:root:/root:/bin/sh" >"$rd/etc/passwd"
echo "root:x:0:" >"$rd/etc/group"

# Modules and their dependencies, in load order, from modules.dep (the .deb ships none: the
# postinst normally runs depmod, so run it on the unpacked tree).
depmod -b "$work/kernel" "$kver"
moddir=$work/kernel/lib/modules/$kver
declare -A loaded=()
order=()
add_module() { # add_module RELPATH: its dependencies first, then itself
    local rel=$1 line i deps=()
    [ -n "${loaded[$rel]:-}" ] && return 0
    loaded[$rel]=1
    line=$(grep -m1 "^$rel:" "$moddir/modules.dep") || { echo "$rel not in modules.dep" >&2; exit 1; }
    read -r -a deps <<<"${line#*:}"
    # modules.dep lists a module's dependencies so that the last one is loaded first.
    for ((i = ${#deps[@]} - 1; i >= 0; i--)); do add_module "${deps[i]}"; done
    order+=("$rel")
}
for m in $MODULES; do
    rel=$(grep -m1 -E "(^|/)$m\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | cut -d: -f1) || true
    [ -n "$rel" ] || { echo "module $m not found in $kver" >&2; exit 1; }
    add_module "$rel"
done
: >"$rd/etc/modules-load"
for rel in "${order[@]}"; do
    # insmod needs the plain .ko (Debian 12 ships them uncompressed; newer ones use .xz).
    name=$(basename "$rel")
    case "$name" in
        *.ko) cp "$moddir/$rel" "$rd/lib/modules/$name" ;;
        *.ko.xz) xz -dc "$moddir/$rel" >"$rd/lib/modules/${name%.xz}"; name=${name%.xz} ;;
        *.ko.zst) zstd -qdc "$moddir/$rel" >"$rd/lib/modules/${name%.zst}"; name=${name%.zst} ;;
        *) echo "cannot handle module $rel" >&2; exit 1 ;;
    esac
    echo "/lib/modules/$name" >>"$rd/etc/modules-load"
done
echo "modules: $(sed 's#.*/##; s#\.ko$##' "$rd/etc/modules-load" | tr '\n' ' ')"

# ACPI power button -> poweroff. busybox acpid runs ./<event with spaces as slashes> under
# its config dir, or, when that is missing, the action its built-in table maps "PWRF" to
# (PWRF/00000080). Cover both spellings QEMU's fixed-feature and device buttons produce.
cat >"$rd/etc/acpi/poweroff" <<'EOF'
#!/bin/sh
echo "ZSTACK-GUEST: poweroff" >/dev/console
poweroff -f
EOF
chmod +x "$rd/etc/acpi/poweroff"
for ev in PWRF/00000080 button/power/PWRF/00000080 button/power/PWRB/00000080; do
    mkdir -p "$rd/etc/acpi/$(dirname "$ev")"
    ln -sf /etc/acpi/poweroff "$rd/etc/acpi/$ev"
done

# --- bootable ISO ---------------------------------------------------------------------------
iso_root=$work/iso
mkdir -p "$iso_root/isolinux"
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$iso_root/isolinux/"
cp "$vmlinuz" "$iso_root/isolinux/vmlinuz"
(cd "$rd" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) \
    | gzip -9n >"$iso_root/isolinux/initrd.gz"
# PROMPT 0 with no TIMEOUT boots the default label at once: no menu, no wait.
cat >"$iso_root/isolinux/isolinux.cfg" <<EOF
DEFAULT guest
PROMPT 0
TIMEOUT 0
LABEL guest
  KERNEL /isolinux/vmlinuz
  INITRD /isolinux/initrd.gz
  APPEND $CMDLINE
EOF
# -isohybrid-mbr puts an MBR in front of the ISO, so the BIOS boots it as a hard disk
# (which is how a virtio disk is seen); isolinux then reads the kernel through int 13h.
xorriso -as mkisofs -quiet -o "$work/guest.iso" -V ZSTACK_GUEST -R \
    -isohybrid-mbr /usr/lib/ISOLINUX/isohdpfx.bin \
    -b isolinux/isolinux.bin -c isolinux/boot.cat \
    -no-emul-boot -boot-load-size 4 -boot-info-table \
    "$iso_root" 2>"$work/xorriso.log" || { cat "$work/xorriso.log" >&2; exit 1; }

# --- qcow2 ----------------------------------------------------------------------------------
mkdir -p "$(dirname "$out")"
qemu-img convert -q -f raw -O qcow2 "$work/guest.iso" "$out.partial"
mv "$out.partial" "$out"
report
