#!/usr/bin/env bash
# Removes a ZStack install from this host: services stopped, every installed file, the units, the
# crontab line (other crontab lines kept). Used by the benchmarks that install for real.
zstack-ctl stop >/dev/null 2>&1 || true
rm -rf /usr/local/zstack /etc/zstack /var/lib/zstack /var/log/zstack /var/log/zstack-installer.log \
    /usr/bin/zstack-ctl /usr/bin/zstack-cli /etc/systemd/system/zstack-server.service \
    /etc/systemd/system/zstack-kvmagent.service /etc/systemd/system/multi-user.target.wants/zstack-*.service \
    /run/zstack /var/lib/zstack-installer.journal
if crontab -l >/dev/null 2>&1; then
    rest=$(crontab -l | grep -v 'zstack-ctl dump_mysql' || true)
    if [ -n "$rest" ]; then printf '%s\n' "$rest" | crontab -; else crontab -r; fi
fi
exit 0
