"""The demo workflow on a real (single-node) SLURM cluster, through profiles/slurm.

Skipped unless ``LAPLACE_HEAD_CLUSTER_TEST=1`` (``make test-cluster`` sets it). Needs root
and a Debian-like machine: install.sh installs slurm-wlm and munge when they are missing,
start_cluster.sh starts munged, slurmctld and slurmd with two stand-in GPUs advertised as a
GRES, and stop_cluster.sh stops exactly those daemons afterwards.

The workflow runs as a user would run it, from the repository root:

    snakemake --workflow-profile profiles/slurm --configfile <smaller demo config>

plus test-only flags: this cluster has no accounting database, so ``sacct`` cannot report job
states and the plugin must poll ``squeue`` (which works because slurm.conf keeps finished jobs
for MinJobAge=900 s), first 6 s after a submission instead of 40 s; and every job's SLURM log
is kept, in the test's output folder, to read which rules each job ran. The shipped profile
itself keeps the plugin's default (sacct), which real clusters need.

Checks: the workflow completes; every rule that did not run locally ran inside SLURM jobs, each
SLURM job ran one rule only (precompute_sam, train_head, ... one SLURM job per Snakemake job;
the many small generate_promptsets jobs bundled by the profile's job group); GPU rules were
submitted with a GPU request (scontrol: TresPerJob gres:gpu:1), CPU rules without one.
Outputs and logs stay in $LH_CLUSTER_TEST_OUT (default /tmp/laplace_head_cluster_test).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_DIR = Path(__file__).resolve().parent
ENV_FLAG = "LAPLACE_HEAD_CLUSTER_TEST"
SLURM_PROFILE = REPO_ROOT / "profiles" / "slurm" / "config.yaml"
WORKFLOW_TIMEOUT_S = 1200

pytestmark = [
    pytest.mark.skipif(
        os.environ.get(ENV_FLAG) != "1",
        reason=f"real SLURM cluster test: set {ENV_FLAG}=1 (make test-cluster); needs root",
    ),
    pytest.mark.workflow,
]


def slurm_profile() -> dict:
    return yaml.safe_load(SLURM_PROFILE.read_text(encoding="utf-8"))


def gpu_rules() -> set[str]:
    """Rules the shipped SLURM profile gives a GPU, plus rules that declare ``gpu=1`` themselves."""
    from_profile = {
        rule
        for rule, resources in slurm_profile()["set-resources"].items()
        if int(resources.get("gpu", 0)) > 0
    }
    declared = set()
    for source in sorted((REPO_ROOT / "rules").glob("*.smk")):
        for block in re.split(r"^(?=(?:rule|checkpoint) )", source.read_text(), flags=re.M):
            match = re.match(r"(?:rule|checkpoint) (\w+):", block)
            if match and re.search(r"^\s+gpu=\d", block, flags=re.MULTILINE):
                declared.add(match.group(1))
    return from_profile | declared


def grouped_rules() -> dict[str, str]:
    """Rule -> job group, as set by the shipped SLURM profile."""
    return dict(slurm_profile().get("groups", {}))


@dataclass
class SlurmJob:
    """One job as ``scontrol -o show job`` reports it, plus the rules its log shows it ran."""

    job_id: str
    state: str
    comment: str
    gres_request: str
    log_path: Path
    rules: Counter

    @property
    def requests_gpu(self) -> bool:
        return "gpu" in self.gres_request


@dataclass
class ClusterRun:
    returncode: int
    log_text: str
    log_path: Path
    project_root: Path
    duration_s: float
    jobs: list[SlurmJob]


def run_script(name: str, *args: str, env: dict | None = None) -> str:
    result = subprocess.run(
        ["bash", str(CLUSTER_DIR / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{name} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def parse_scontrol_jobs(text: str) -> list[dict[str, str]]:
    """``scontrol -o show job`` output (one job per line) as dicts of its key=value fields."""
    jobs = []
    for line in text.splitlines():
        if not line.startswith("JobId="):
            continue
        # Values contain no spaces except in a few fields (e.g. Reason); split before "Key=".
        fields = re.split(r" (?=[A-Za-z/:]+=)", line.strip())
        jobs.append(dict(field.split("=", 1) for field in fields if "=" in field))
    return jobs


def rules_in_job_log(log_path: Path) -> Counter:
    """How many jobs of each rule a SLURM job's log shows it ran.

    Inside a SLURM job, the jobstep executor prints ``rule NAME:`` (or ``checkpoint NAME:``)
    once per Snakemake job it runs; the srun step below it prints ``localrule NAME:`` again,
    which is not counted.
    """
    if not log_path.is_file():
        return Counter()
    text = log_path.read_text(encoding="utf-8", errors="replace")
    return Counter(re.findall(r"^\s*(?:rule|checkpoint) (\w+):$", text, flags=re.MULTILINE))


def finished_rules(log_text: str) -> Counter:
    """Jobs per rule that the main Snakemake process reports as finished."""
    return Counter(re.findall(r"^Finished jobid: \d+ \(Rule: (\w+)\)$", log_text, re.MULTILINE))


def local_rules(log_text: str) -> set[str]:
    """Rules the main Snakemake process ran itself (printed as ``localrule NAME:``)."""
    return set(re.findall(r"^\s*local(?:rule|checkpoint) (\w+):$", log_text, re.MULTILINE))


def slurm_jobs(env: dict) -> list[SlurmJob]:
    text = subprocess.run(
        ["scontrol", "-o", "show", "job"], capture_output=True, text=True, env=env, check=True
    ).stdout
    jobs = []
    for fields in parse_scontrol_jobs(text):
        log_path = Path(fields.get("StdOut", ""))
        gres = " ".join(fields.get(key, "") for key in ("TresPerJob", "TresPerNode", "TresPerTask"))
        jobs.append(
            SlurmJob(
                job_id=fields["JobId"],
                state=fields.get("JobState", "?"),
                comment=fields.get("Comment", ""),
                gres_request=gres,
                log_path=log_path,
                rules=rules_in_job_log(log_path),
            )
        )
    return jobs


def write_demo_config(out_dir: Path) -> Path:
    """A smaller demo: config/demo.yaml on a 5-per-class demo dataset, with fewer prompt sets,
    one epoch and short Laplace grids, all outputs under ``out_dir``.

    Every stage still runs, with several shards per split where it matters (train), so that the
    job grouping of generate_promptsets is exercised; the full demo takes far longer on a
    2-core machine where all GPU-tagged jobs queue for the one advertised GPU.
    """
    subprocess.run(
        [sys.executable, "-m", "laplace_head", "demo-data", "--out", str(out_dir / "demo_data")]
        + ["--per-class", "5"],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
    )
    config = yaml.safe_load((REPO_ROOT / "config" / "demo.yaml").read_text(encoding="utf-8"))
    config["data"].update(
        images_root=str(out_dir / "demo_data" / "images_root"),
        masks_root=str(out_dir / "demo_data" / "masks_root"),
        project_root=str(out_dir / "project"),
        shard_size=4,
    )
    config["prompt_generation"].update(
        num_promptsets_train=2, num_promptsets_val=2, num_promptsets_test=2
    )
    config["sam"]["random_walker_max_side"] = 64
    config["training"]["num_epochs"] = 1
    config["laplace"].update(
        prior_precision_grid=[0.01, 1.0],
        temperature_grid=[1.0, 100.0],
        max_pixels_fit=200_000,
        n_posterior_samples=4,
    )
    path = out_dir / "demo_cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def slurm_env():
    """A running single-node cluster; yields the environment that points clients at it."""
    if os.geteuid() != 0:
        pytest.fail("the SLURM cluster test must run as root (it installs and starts daemons)")
    state_dir = Path(os.environ.get("LH_SLURM_DIR", "/tmp/laplace_head_slurm"))
    run_script("install.sh")
    env = dict(os.environ, PATH=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    try:
        run_script("start_cluster.sh", str(state_dir), env=env)
        env["SLURM_CONF"] = str(state_dir / "etc" / "slurm.conf")
        yield env
    finally:
        print(run_script("stop_cluster.sh", str(state_dir), env=env))


@pytest.fixture(scope="module")
def cluster_run(slurm_env: dict) -> ClusterRun:
    # A fixed folder (not pytest's tmp_path, which later pytest runs prune) so that the logs
    # of a failed run can still be read afterwards.
    out_dir = Path(os.environ.get("LH_CLUSTER_TEST_OUT", "/tmp/laplace_head_cluster_test"))
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    config_path = write_demo_config(out_dir)
    log_path = out_dir / "snakemake.log"
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--workflow-profile",
        str(REPO_ROOT / "profiles" / "slurm"),
        "--configfile",
        str(config_path),
        # Test-only: no slurmdbd here, so poll squeue instead of sacct, and poll
        # early (the interval grows by 10 s per check until a job ends: 6, 22, 48 s);
        # keep every job's SLURM log (the plugin deletes successful ones) to read what ran.
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "6",
        "--slurm-keep-successful-logs",
        "--slurm-logdir",
        str(out_dir / "slurm_logs"),
    ]
    start = time.monotonic()
    with log_path.open("w", encoding="utf-8") as log:
        result = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env=slurm_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=WORKFLOW_TIMEOUT_S,
        )
    duration = time.monotonic() - start
    return ClusterRun(
        returncode=result.returncode,
        log_text=log_path.read_text(encoding="utf-8", errors="replace"),
        log_path=log_path,
        project_root=out_dir / "project",
        duration_s=duration,
        jobs=slurm_jobs(slurm_env),
    )


def test_parse_scontrol_jobs() -> None:
    line = (
        "JobId=7 JobName=abc UserId=root(0) JobState=COMPLETED Reason=None "
        "Comment=rule_train_head_wildcards_v1 StdOut=/x/7.log TresPerJob=gres:gpu:1"
    )
    (job,) = parse_scontrol_jobs(line + "\n")
    assert job["JobId"] == "7"
    assert job["JobState"] == "COMPLETED"
    assert job["Comment"] == "rule_train_head_wildcards_v1"
    assert job["TresPerJob"] == "gres:gpu:1"


def test_workflow_completes_through_the_slurm_profile(cluster_run: ClusterRun) -> None:
    tail = "\n".join(cluster_run.log_text.splitlines()[-60:])
    assert cluster_run.returncode == 0, f"snakemake failed, log {cluster_run.log_path}:\n{tail}"
    assert re.search(r"(\d+) of \1 steps \(100%\) done", cluster_run.log_text), tail
    assert "executor: slurm" in cluster_run.log_text or "SLURM run ID" in cluster_run.log_text
    assert (cluster_run.project_root / "training_data" / "no_image" / "train.h5").is_file()
    print(f"cluster workflow took {cluster_run.duration_s:.0f} s, {len(cluster_run.jobs)} jobs")


def test_every_rule_ran_in_its_own_slurm_jobs(cluster_run: ClusterRun) -> None:
    finished = finished_rules(cluster_run.log_text)
    remote = {
        rule: n for rule, n in finished.items() if rule not in local_rules(cluster_run.log_text)
    }
    assert remote, "no job ran through SLURM"
    assert cluster_run.jobs, "SLURM knows no jobs (MinJobAge too short?)"

    ran_in_slurm: Counter = Counter()
    for job in cluster_run.jobs:
        assert job.state == "COMPLETED", f"SLURM job {job.job_id} ({job.comment}): {job.state}"
        assert job.rules, f"SLURM job {job.job_id}: no rule in its log {job.log_path}"
        assert len(job.rules) == 1, f"SLURM job {job.job_id} mixed rules: {dict(job.rules)}"
        ran_in_slurm.update(job.rules)
    assert ran_in_slurm == Counter(remote), (
        f"jobs per rule in SLURM {dict(ran_in_slurm)} != finished remote jobs {remote}"
    )

    jobs_per_rule = Counter(next(iter(job.rules)) for job in cluster_run.jobs)
    grouped = grouped_rules()
    for rule, n_snakemake_jobs in remote.items():
        if rule in grouped:
            # Bundled by the profile's job group: fewer SLURM jobs than Snakemake jobs.
            assert jobs_per_rule[rule] <= n_snakemake_jobs
        else:
            assert jobs_per_rule[rule] == n_snakemake_jobs, (
                f"{rule}: {n_snakemake_jobs} jobs ran in {jobs_per_rule[rule]} SLURM jobs"
            )
    if remote.get("generate_promptsets", 0) > 1 and "generate_promptsets" in grouped:
        assert jobs_per_rule["generate_promptsets"] < remote["generate_promptsets"]


def test_gpu_rules_request_a_gpu_and_cpu_rules_do_not(cluster_run: ClusterRun) -> None:
    wanted = gpu_rules()
    assert {"precompute_sam", "train_head"} <= wanted
    seen_gpu_rules = set()
    for job in cluster_run.jobs:
        (rule,) = job.rules
        if rule in wanted:
            assert "gres:gpu:1" in job.gres_request or "gres/gpu:1" in job.gres_request, (
                f"SLURM job {job.job_id} ({rule}) has no GPU request: {job.gres_request!r}"
            )
            seen_gpu_rules.add(rule)
        else:
            assert not job.requests_gpu, f"CPU rule {rule} requested a GPU ({job.job_id})"
    assert {"precompute_sam", "train_head"} <= seen_gpu_rules, f"GPU rules seen: {seen_gpu_rules}"
