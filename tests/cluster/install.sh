#!/usr/bin/env bash
# Install Debian's SLURM (slurm-wlm) and MUNGE when they are missing.
#
# Used by the cluster test (tests/cluster/test_slurm.py) on a fresh Debian/Ubuntu machine.
# Does nothing when slurmctld, slurmd, sbatch and munged are already on PATH.
# Needs root (apt-get). No daemon is started here: see start_cluster.sh.
set -euo pipefail

PATH="$PATH:/usr/sbin:/sbin"
missing=0
for tool in slurmctld slurmd sbatch squeue scontrol munged mungekey; do
    command -v "$tool" >/dev/null 2>&1 || missing=1
done
if [[ "$missing" == 0 ]]; then
    echo "install.sh: slurm-wlm and munge already installed"
    exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
    echo "install.sh: slurm-wlm/munge are missing and installing them needs root" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install.sh: no apt-get; install SLURM (slurmctld, slurmd, sbatch) and MUNGE by hand" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d-less containers may try to start munge from the postinst; that is harmless,
# start_cluster.sh runs its own munged on its own socket.
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
echo "install.sh: installed $(slurmctld -V) and munge $(dpkg-query -W -f='${Version}' munge)"
