"""Several `simsiam` commands in one torchrun launch (used by tests/test_distributed.py): every
process imports torch once for all of them instead of once per command.

    torchrun --standalone --nproc_per_node 2 tests/torchrun_jobs.py JOBS.json

JOBS.json holds a list of jobs: an argument list (`simsiam ARGS`), or {"call": "MODULE:FUNCTION",
"args": [...]} for a function of a module beside this file, called with its args in the process
group (an exit code of 0 when it returns). The first command joins torchrun's process group as
any `simsiam` command does; the group is kept for the others (torch cannot join the default group
again after leaving it: the second rendezvous finds the first one's addresses), so they find it
joined and leave it be, and it is left at the end. Before each job rank 0 prints `=== job N ===`
(the output splits per job; only rank 0 may print anything else either); each rank writes the
jobs' exit codes to JOBS.json.rank<R>.json."""

import importlib
import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from simsiam.cli import main

jobs = Path(sys.argv[1])
rank = int(os.environ.get("RANK", "0"))
leave = dist.destroy_process_group
dist.destroy_process_group = lambda *a, **kw: None  # keep the group the first command joins
codes = []
for i, args in enumerate(json.loads(jobs.read_text())):
    if rank == 0:
        print(f"=== job {i} ===", flush=True)
    if isinstance(args, dict):
        module, function = args["call"].split(":")
        getattr(importlib.import_module(module), function)(*args["args"])
        codes.append(0)
    else:
        codes.append(main(args))
    sys.stdout.flush()
    sys.stderr.flush()
    assert dist.is_initialized(), "the first command did not join torchrun's process group"
leave()
Path(f"{jobs}.rank{rank}.json").write_text(json.dumps(codes))
