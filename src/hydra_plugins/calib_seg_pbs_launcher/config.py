"""Structured config (schema) of the PBS launcher, registered as ``hydra/launcher: calib_seg_pbs``.

``conf/hydra/launcher/pbs.yaml`` extends it with the project's defaults; other Hydra apps can use
``hydra/launcher=calib_seg_pbs`` directly. Being a dataclass, a typo such as
``hydra.launcher.ncpu=4`` fails when the sweep starts instead of after a day in the queue.
"""

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore


@dataclass
class PBSLauncherConf:
    _target_: str = "hydra_plugins.calib_seg_pbs_launcher.pbs_launcher.PBSLauncher"

    # "pbspro" (PBS Pro/OpenPBS: '#PBS -J', select=...:ncpus:ngpus:mem, $PBS_ARRAY_INDEX) or
    # "torque" (Torque/classic PBS: '#PBS -t', nodes=..:ppn=..:gpus=.., $PBS_ARRAYID)
    dialect: str = "pbspro"
    # the Hydra app each array task re-runs as `python -m <app_module> <overrides>`; it must be the
    # same app that started the sweep (it is not auto-detected: `python app.py` has no module name)
    app_module: str = "calib_seg.train"
    # interpreter on the compute nodes; None = the one running the sweep (shared filesystem assumed)
    python: str | None = None

    # resources of ONE array task (= one Hydra job)
    job_name: str = "${hydra.job.name}"
    queue: str | None = None
    account: str | None = None
    nodes: int = 1  # pbspro: select=<nodes>; torque: nodes=<nodes>
    ncpus: int = 4  # pbspro: ncpus per chunk; torque: ppn
    ngpus: int = 0  # pbspro: ngpus per chunk; torque: gpus per node; 0 = not requested
    mem: str | None = "16gb"  # pbspro: per chunk (select ...:mem=); torque: per job (-l mem=)
    walltime: str = "04:00:00"
    # at most this many array tasks run at once (torque: -t 0-N%P; pbspro: -W max_run_subjobs=P)
    array_parallelism: int | None = None
    # '#PBS -r y': a preempted task may be requeued into the same job folder; with ckpt_path=last
    # calib_seg.train resumes from that folder's last.ckpt
    rerunnable: bool = True
    # '#PBS -V': tasks inherit the submitting environment (venv, CALIB_SEG_* variables, PATH)
    export_env: bool = True
    # extra directives, written as '#PBS <line>', e.g. ["-l place=scatter", "-m ae"]
    directives: list[str] = field(default_factory=list)
    # shell lines run before python in every task, e.g. ["module load cuda/12.1", "source venv/bin/activate"]
    setup: list[str] = field(default_factory=list)

    # where the scripts, overrides file, task logs and exit markers go (one subfolder per batch)
    scripts_dir: str = "${hydra.sweep.dir}/.pbs"
    qsub: str = "qsub"
    qstat: str = "qstat"
    qdel: str = "qdel"
    qsub_args: list[str] = field(default_factory=list)
    # name of the run record each job writes into its own folder
    run_record: str = "run.json"

    # write the scripts but do not submit (inspect <scripts_dir>/batch_*/job.pbs)
    dry_run: bool = False
    # wait for the array and return the jobs' results to the sweeper; False = submit and return
    wait: bool = True
    poll_interval_s: float = 30.0
    # hard bound on the wait; remaining tasks are then reported failed (and qdel'ed if cancel_on_timeout)
    wait_timeout_s: float = 86400.0
    cancel_on_timeout: bool = True
    # once the scheduler no longer lists the job, how long to wait for run.json/exit markers to appear
    # (shared filesystems lag) before calling the remaining tasks killed
    grace_s: float = 60.0
    # bound on each qsub/qstat/qdel call, so a hung server cannot hang the sweep
    command_timeout_s: float = 120.0


ConfigStore.instance().store(
    group="hydra/launcher",
    name="calib_seg_pbs",
    node=PBSLauncherConf,
    provider="calib_seg_pbs_launcher",
)
