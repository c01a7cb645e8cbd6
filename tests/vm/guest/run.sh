#!/bin/sh
# Runs inside the Debian 12 VM, as root, started by the image's reflow-vm-job.service
# (scripts/build-vm-image.sh) from the job folder the host shares at /mnt/job:
#   env                           REPO, the repository's path on the host (shared read-only
#                                 at the same path, its .venv with it), and PYTEST_ARGS
#   reflow-microsandbox.service   the role's unit, rendered by tests/vm/render-guest.yml
#   microsandbox.yaml             the role's config (production pool sizes)
# It installs them as the role would, then runs pytest in a unit that is the role's unit
# with pytest in place of the server. Results go back into /mnt/job (junit.xml,
# pytest.log, journal.log); the exit status is pytest's.
set -eu
. /mnt/job/env
mkdir -p "$REPO"
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144,cache=loose repo "$REPO"
echo "guest: kernel $(uname -r), $(stat -fc %T /sys/fs/cgroup) at /sys/fs/cgroup," \
  "node $(node --version), $(python3 --version), $(bwrap --version)"

# What the role's install.yml and configure.yml create (the venv is the host's, made from
# Debian's python3 3.11.2 like the guest's own, at the role's path).
echo "microsandbox:x:998:" >>/etc/group
echo "microsandbox:x:998:998::/opt/reflow-microsandbox:/usr/sbin/nologin" >>/etc/passwd
mkdir -p /opt/reflow-microsandbox /etc/reflow-microsandbox /var/lib/reflow-microsandbox \
  /srv/reflow-microsandbox/scripts
ln -s "$REPO/.venv" /opt/reflow-microsandbox/venv
chown microsandbox:microsandbox /var/lib/reflow-microsandbox
chmod 0770 /var/lib/reflow-microsandbox
install -o root -g microsandbox -m 0640 /mnt/job/microsandbox.yaml /etc/reflow-microsandbox/
cp "$REPO"/examples/* /srv/reflow-microsandbox/scripts/
chgrp -R microsandbox /srv/reflow-microsandbox/scripts /etc/reflow-microsandbox
chmod -R u=rwX,g=rX,o= /srv/reflow-microsandbox/scripts
chmod 0750 /etc/reflow-microsandbox /srv/reflow-microsandbox/scripts
install -m 0644 /mnt/job/reflow-microsandbox.service /etc/systemd/system/
# Whatever else the unit needs writable (the role's install.yml creates each; a missing
# one fails the unit with status 226/NAMESPACE).
for path in $(sed -n 's/^ReadWritePaths=//p' /mnt/job/reflow-microsandbox.service); do
  path=${path#-}
  [ -d "$path" ] || install -d -o microsandbox -g microsandbox -m 0775 "$path"
done

# The tests' unit: the role's unit (Delegate=yes, its capabilities and hardening) running
# pytest instead of the server.
install -m 0644 /mnt/job/reflow-microsandbox.service /etc/systemd/system/reflow-vm-tests.service
mkdir -p /etc/systemd/system/reflow-vm-tests.service.d
cat >/etc/systemd/system/reflow-vm-tests.service.d/pytest.conf <<EOF
[Unit]
Description=The sandbox tests under the role's unit settings
[Service]
Type=oneshot
Restart=no
TimeoutStartSec=infinity
ExecStart=
ExecStart=$REPO/.venv/bin/python -m pytest -p no:cacheprovider --junitxml=/mnt/job/junit.xml -o junit_family=xunit1 $PYTEST_ARGS
WorkingDirectory=$REPO
ReadWritePaths=/mnt/job
Environment=REFLOW_VM_GUEST=1 REFLOW_TEST_TIME_SCALE=5 PYTHONDONTWRITEBYTECODE=1
StandardOutput=append:/mnt/job/pytest.log
StandardError=append:/mnt/job/pytest.log
EOF
systemctl daemon-reload
systemctl start reflow-vm-tests.service || true
status=$(systemctl show -p ExecMainStatus --value reflow-vm-tests.service)
journalctl --no-pager -o short-monotonic -u reflow-microsandbox.service >/mnt/job/journal.log 2>&1 || true
tail -n 5 /mnt/job/pytest.log
exit "$status"
