#!/usr/bin/env bash
# Installer speed and size, printed:
#  1. extract + verify: our .bin (`--extract`: every part's sha256, each file against the MANIFEST)
#     against makeself packing the same files (the release tree; its bin/zstack is the installer
#     program too, run as `zstack zstack-installer`) with its default gzip and its default md5/crc
#     checks, and with makeself at its strongest (`--zstd --sha256`, zstd level 19 as ours), all
#     `--noexec --target`, side by side, with the sizes. The target against
#     `makeself --zstd --sha256`: at least twice as fast, at most 0.6 of its size;
#  2. a full --sysroot install into a fresh directory;
#  3. with ZSTACK_BENCH_REAL_INSTALL=1 and nothing installed: a real install until the API
#     answers (removed again after each run).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${BIN:-build/zstack-installer-1.2.0.bin}")
RUNS=${RUNS:-10}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
command -v hyperfine >/dev/null || { echo "hyperfine is needed (apt-get install hyperfine)" >&2; exit 1; }
command -v makeself >/dev/null || { echo "makeself is needed (apt-get install makeself)" >&2; exit 1; }

# The same files for makeself: the release tree, whose bin/zstack is the installer program too.
mkdir -p "$work/stage"
bash "$BIN" --extract "$work/stage/release" >/dev/null
makeself --quiet "$work/stage" "$work/makeself.run" "ZStack (makeself baseline)" ./release/bin/zstack zstack-installer --check >/dev/null
makeself --quiet --zstd --complevel 19 --sha256 "$work/stage" "$work/makeself-zstd.run" "ZStack (makeself zstd baseline)" ./release/bin/zstack zstack-installer --check >/dev/null
ours_size=$(stat -c %s "$BIN")
ms_size=$(stat -c %s "$work/makeself.run")
msz_size=$(stat -c %s "$work/makeself-zstd.run")

hyperfine --runs "$RUNS" --warmup 2 --export-json "$work/extract.json" \
    -n "zstack .bin --extract" "rm -rf $work/o1 && bash $BIN --extract $work/o1" \
    -n "makeself --noexec --target" "rm -rf $work/o2 && $work/makeself.run --quiet --noexec --target $work/o2" \
    -n "makeself --zstd --sha256" "rm -rf $work/o3 && $work/makeself-zstd.run --quiet --noexec --target $work/o3" >/dev/null

hyperfine --runs "$RUNS" --warmup 1 --export-json "$work/sysroot.json" \
    -n "sysroot install" "rm -rf $work/sr && bash $BIN --sysroot $work/sr -q" >/dev/null

real_json=
if [ "${ZSTACK_BENCH_REAL_INSTALL:-}" = 1 ]; then
    if [ -e /usr/local/zstack/current ] || [ -e /etc/zstack ]; then
        echo "real install: skipped, ZStack is already installed on this host"
    else
        hyperfine --runs 5 --export-json "$work/real.json" --cleanup "bash scripts/uninstall-from-host.sh" \
            -n "real install until the API answers" "bash $BIN -q -I 127.0.0.1 && curl -sf http://127.0.0.1:8080/health >/dev/null" >/dev/null
        real_json=$work/real.json
    fi
fi

python3 - "$work/extract.json" "$work/sysroot.json" "$ours_size" "$ms_size" "$real_json" "$msz_size" <<'PY'
import json, sys
ex = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
ours = ex["zstack .bin --extract"]
osz = int(sys.argv[3])
ms_ = lambda r: f'{r["mean"]*1000:.1f} ms ± {r["stddev"]*1000:.1f}'
# CPU time (user + system, all processes of a run): what a run costs, also on a busy machine.
cpu = lambda r: r["user"] + r["system"]
print(f'extract+verify: zstack .bin {ms_(ours)}, cpu {cpu(ours)*1000:.1f} ms ({osz/1e6:.2f} MB)')
for name, size, speed_target, size_target in [
    ("makeself --noexec --target", int(sys.argv[4]), 1.0, 1.0),
    ("makeself --zstd --sha256", int(sys.argv[6]), 2.0, 0.6),
]:
    r = ex[name]
    speed, ratio = r["mean"] / ours["mean"], osz / size
    met = speed >= speed_target and ratio <= size_target
    print(f'  {name}: {ms_(r)}, cpu {cpu(r)*1000:.1f} ms ({size/1e6:.2f} MB) -> zstack is '
          f'{speed:.2f}x as fast ({cpu(r)/cpu(ours):.2f}x in cpu time) and {ratio:.2f} of its size '
          f'(target: >= {speed_target:.1f}x, <= {size_target:.1f})'
          + ('' if met else '   ** TARGET MISSED **'))
sr = json.load(open(sys.argv[2]))["results"][0]
print(f"full --sysroot install: {ms_(sr)}")
if sys.argv[5]:
    rl = json.load(open(sys.argv[5]))["results"][0]
    print(f'real install until the API answers: {ms_(rl)}')
PY
