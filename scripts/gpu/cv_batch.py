"""Run a plan of run.py sweeps side by side on one GPU machine, within a deadline (the device tool's one short call).

    python3 scripts/gpu/cv_batch.py experiments/plans/gpu_2026-12-04.yaml --root /tmp/runs --deadline 450

A plan (YAML) lists groups in priority order; each group is one run.py process: a multirun (`multirun: true`, e.g.
the 5 folds of one recipe_cv variant, run one after another in that process) or a single run, optionally followed by
the zero-shot harness on its export (`harness: true`). At most `concurrency` groups run at once, the first ones
first; a group still waiting or running at the deadline is stopped, and its finished jobs keep their result.json
(the summaries name what is missing). Every group's output lands in <root>/<group name>/ (hydra.sweep.dir or
hydra.run.dir), with its console log beside it as <root>/<group name>.log. `scripts/gpu/cv_batch.sh` is the device
wrapper (environment, weights, data, results back in $OUT).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

# the 10 paper benchmark sets (gliclass.data.benchmarks.PAPER_BENCHMARKS; not imported: this script runs before
# the package's dependencies are checked)
PAPER_SETS = ("sst2", "sst5", "rotten_tomatoes", "cr", "imdb", "ag_news", "emotion", "spam", "banking77", "snips")


def commands(group: dict, root: Path, python: str, harness_limit: int = 500) -> list[list[str]]:
    name, args = group["name"], [str(a) for a in group.get("args", [])]
    out = root / name
    if group.get("multirun", False):
        runs = [[python, "run.py", "-m", *args, f"hydra.sweep.dir={out}"]]
    else:
        runs = [[python, "run.py", *args, f"hydra.run.dir={out}"]]
    if group.get("harness", False):
        run_name = next((a.split("=", 1)[1] for a in args if a.startswith("run_name=")), None)
        if run_name is None:
            raise SystemExit(
                f"group {name}: harness: true needs run_name=... in args (its export is models/<run_name>)"
            )
        runs.append(
            [python, "-m", "gliclass.evaluation.zero_shot", "--model", f"ours=models/{run_name}", "--limit", str(harness_limit),
             "--whole-up-to", "1000", "--datasets", ",".join(PAPER_SETS), "--systems", "ours,embed-sim", "--threads", str(group.get("threads", 2)),
             "--out", str(out / "zero_shot"), "--name", "zero_shot"]
        )  # fmt: skip
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("plan", type=Path)
    p.add_argument("--root", type=Path, required=True, help="where every group's runs go")
    p.add_argument("--deadline", type=float, default=None, help="seconds; default: the plan's deadline_s")
    p.add_argument("--concurrency", type=int, default=None, help="default: the plan's concurrency")
    p.add_argument("--only", nargs="*", default=None, help="run only these groups (names)")
    p.add_argument("--extra", nargs="*", default=[], help="overrides appended to every run.py command (smoke tests)")
    p.add_argument("--harness-limit", type=int, default=500, help="rows per set of the harness (smoke tests: fewer)")
    args = p.parse_args(argv)
    plan = yaml.safe_load(args.plan.read_text())
    groups = [g for g in plan["groups"] if args.only is None or g["name"] in args.only]
    names = [g["name"] for g in groups]
    if len(set(names)) != len(names):
        raise SystemExit(f"{args.plan}: group names repeat: {names}")
    deadline = time.monotonic() + (args.deadline or plan.get("deadline_s", 450))
    limit = args.concurrency or plan.get("concurrency", 8)
    args.root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **{k: str(v) for k, v in (plan.get("env") or {}).items()}}

    pending = [(g, commands(g, args.root, sys.executable, args.harness_limit)) for g in groups]
    for _, cmds in pending:
        for cmd in cmds:
            if cmd[1] == "run.py":
                cmd[-1:-1] = args.extra
    running: dict[str, tuple[subprocess.Popen, list[list[str]], object, float]] = {}
    status: dict[str, str] = {}
    t0 = time.monotonic()

    def launch(name: str, cmds: list[list[str]]) -> None:
        log = open(args.root / f"{name}.log", "ab")  # noqa: SIM115  (closed when its process ends)
        cmd = cmds.pop(0)
        log.write(("$ " + shlex.join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        running[name] = (proc, cmds, log, time.monotonic())

    while (pending or running) and time.monotonic() < deadline:
        while pending and len(running) < limit:
            group, cmds = pending.pop(0)
            launch(group["name"], cmds)
        for name, (proc, cmds, log, started) in list(running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            del running[name]
            if rc == 0 and cmds:
                log.close()
                launch(name, cmds)  # the group's next command (the harness after training)
                continue
            log.close()
            status[name] = "ok" if rc == 0 else f"exit {rc}"
            print(
                f"[{time.monotonic() - t0:6.0f}s] {name}: {status[name]} ({time.monotonic() - started:.0f}s)",
                flush=True,
            )
        time.sleep(1)
    for name, (proc, _, log, _) in running.items():
        os.killpg(proc.pid, signal.SIGKILL)
        status[name] = "stopped at the deadline"
        log.close()
    for group, _ in pending:
        status[group["name"]] = "not started (deadline)"
    print(f"done in {time.monotonic() - t0:.0f}s:", flush=True)
    for name in names:
        print(f"  {name}: {status.get(name)}", flush=True)
    return 0 if all(s == "ok" for s in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
