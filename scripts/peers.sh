#!/usr/bin/env bash
# Install the Debian packages whose daemons the adapter tests start as real peers on high
# loopback ports (the fixtures start and stop them; nothing here runs them as services).
set -eu
need=()
command -v vsftpd >/dev/null 2>&1 || [ -x /usr/sbin/vsftpd ] || need+=(vsftpd)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v snmptrap >/dev/null 2>&1 || need+=(snmp)
[ -x /usr/sbin/snmpd ] || need+=(snmpd)
[ -x /usr/sbin/snmptrapd ] || need+=(snmptrapd)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  echo "peers: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian starts some daemons on install; the tests run their own instances.
  for s in vsftpd ssh snmpd snmptrapd; do service "$s" stop >/dev/null 2>&1 || true; done
fi
