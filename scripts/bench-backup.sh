#!/usr/bin/env bash
# dump_mysql against `sqlite3 DB ".backup FILE"` + gzip, and against copying the DB file and
# compressing it, on a database of 1,000,000 rows, side by side. Needs build/zstack-installer-1.2.0.bin.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build/zstack-installer-1.2.0.bin}
ROWS=${ROWS:-1000000}
RUNS=${RUNS:-5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

bash "$BIN" --sysroot "$work/root" -q >/dev/null 2>&1
db=$work/root/var/lib/zstack/zstack.db
ctl=$work/root/usr/local/zstack/current/bin/zstack-ctl
sqlite3 "$db" <<SQL
CREATE TABLE bench_vm (uuid TEXT PRIMARY KEY, name TEXT, state TEXT, cpu_num INTEGER, memory_size INTEGER, host_uuid TEXT);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $ROWS)
INSERT INTO bench_vm SELECT lower(hex(randomblob(16))), 'vm-' || i, CASE i % 3 WHEN 0 THEN 'Running' WHEN 1 THEN 'Stopped' ELSE 'Starting' END,
       1 + i % 8, 1073741824 * (1 + i % 4), lower(hex(randomblob(16))) FROM n;
SQL
size=$(stat -c %s "$db")
echo "database: $ROWS rows, $((size / 1048576)) MiB"

export ZSTACK_SYSROOT=$work/root
out=$work/out
mkdir -p "$out"
if command -v hyperfine >/dev/null; then
    hyperfine --runs "$RUNS" --warmup 1 --export-json "$work/h.json" \
        -n "zstack-ctl dump_mysql" "$ctl dump_mysql --keep-amount 2" \
        -n "sqlite3 .backup + gzip" "rm -f $out/b.db $out/b.db.gz; sqlite3 $db '.backup $out/b.db' && gzip $out/b.db" \
        -n "cp + gzip" "rm -f $out/c.db $out/c.db.gz; cp $db $out/c.db && gzip $out/c.db" \
        -n "cp + zstd -3" "rm -f $out/d.db.zst; cp $db $out/d.db && zstd -q -3 --rm $out/d.db" >/dev/null
    python3 - "$work/h.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
base = {x["command"]: x for x in r}
ours = base["zstack-ctl dump_mysql"]["mean"]
for x in r:
    print(f'{x["command"]:<26} {x["mean"]*1000:8.0f} ms ± {x["stddev"]*1000:5.0f}   ({x["mean"]/ours:4.2f}x of dump_mysql)')
ref = base["sqlite3 .backup + gzip"]["mean"]
print(f'dump_mysql (online backup, verified by restoring and integrity_check) is {ref/ours:.1f}x as fast as sqlite3 .backup + gzip')
PY
else
    for name in dump backupgzip; do
        t0=$(date +%s%N)
        for _ in $(seq "$RUNS"); do
            case $name in
                dump) "$ctl" dump_mysql --keep-amount 2 >/dev/null ;;
                backupgzip) rm -f "$out/b.db" "$out/b.db.gz"; sqlite3 "$db" ".backup $out/b.db" && gzip "$out/b.db" ;;
            esac
        done
        echo "$name: $(( ($(date +%s%N) - t0) / RUNS / 1000000 )) ms per run"
    done
fi
ours=$(ls -1 "$work/root/var/lib/zstack/mysql-backup/"zstack-backup-db-* | tail -1)
echo "sizes: dump_mysql $(( $(stat -c %s "$ours") / 1048576 )) MiB (.zst, with zstack.properties)," \
     "sqlite3+gzip $(( $(stat -c %s "$out/b.db.gz") / 1048576 )) MiB"
