"""torchrun with two CPU processes (gloo) against one process with the same global batch.

Every rank draws what one process would (the permutation, and the augmentation parameters of the
whole global batch, of which it applies its own rows), and SyncBN gives BatchNorm the global
batch's statistics, so two processes train what one does up to float summation order. That
order alone already moves a single process's weights by about 1e-6 between 1 and 2 threads in
this setting (a low lr keeps the short runs from amplifying it), hence the tolerances below.

One torchrun launch runs every two-process command of this file (tests/torchrun_jobs.py: its
processes import torch once, not once per command); the one-process runs they are compared with
run in this process through `simsiam.cli.main`, on one thread as each torchrun process does.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from simsiam import fit
from simsiam.cli import main

from conftest import TINY, flags, tiny_config

# The tiny model, 2 steps of 32 an epoch, kNN every epoch, a low lr (see above).
SMALL = [*TINY, *flags(dict(subset=64, batch_size=32, lr=0.1, knn_every=1, log_every=1))]
OWN = {"swav": ["--prototypes", "16"]}  # a method's own options
METHODS = ["byol", "swav", "simclr", "mocov2"]
TOL = 1e-4  # max |w_single - w_ddp| after 4 steps (measured: 1.3e-6; one process on 1 vs 2 threads: 1.0e-6)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(jobs: list[list[str]], folder: Path, nproc: int = 2) -> tuple[list[str], str, list[list[int]]]:
    """Every command of `jobs` in one `torchrun --nproc_per_node nproc` launch: (each command's
    stdout, the launch's stderr, each rank's exit codes)."""
    spec = folder / "jobs.json"
    spec.write_text(json.dumps(jobs))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    res = subprocess.run(
        [*launcher, str(Path(__file__).with_name("torchrun_jobs.py")), str(spec)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    outputs = res.stdout.split("=== job ")[1:]
    assert [o.split(" ===")[0] for o in outputs] == [str(i) for i in range(len(jobs))], res.stdout[-3000:]
    codes = [json.loads(Path(f"{spec}.rank{r}.json").read_text()) for r in range(nproc)]
    return outputs, res.stderr, codes


def model(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_training(a, b, tol=TOL):
    ma, mb = metrics(a), metrics(b)
    assert len(ma) == len(mb)  # one line per epoch: only rank 0 wrote
    for x, y in zip(ma, mb):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5), (x, y)
        assert x.get("knn_top1") == y.get("knn_top1")  # every rank a share of the features: the same number
    wa, wb = model(a), model(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k].double(), wb[k].double(), rtol=0, atol=tol, msg=k)


def train_here(run_dir, *args):
    assert main(["train", *SMALL, "--run-dir", str(run_dir), *args]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The one-process runs, then every two-process command in one launch (job numbers in JOBS),
    then the one-process resume of a two-process run."""
    root = tmp_path_factory.mktemp("ddp")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_here(root / "single", "--knn-random-init")
        for m in METHODS:
            train_here(root / f"single-{m}", "--method", m, *OWN.get(m, []))
        train_here(root / "s2d", "--epochs", "1")  # one process, then torchrun
        assert main(["eval", "knn", str(root / "single"), "--out", str(root / "one.json")]) == 0
        jobs = {
            "ddp": ["train", *SMALL, "--knn-random-init", "--run-dir", str(root / "ddp")],
            **{
                m: ["train", *SMALL, "--method", m, *OWN.get(m, []), "--run-dir", str(root / f"ddp-{m}")]
                for m in METHODS
            },
            "d2s": ["train", *SMALL, "--epochs", "1", "--run-dir", str(root / "d2s")],  # torchrun, then one process
            "s2d": ["train", "--resume", "--run-dir", str(root / "s2d"), "--epochs", "2"],
            "local-bn": ["train", *SMALL, "--epochs", "1", "--no-sync-bn", "--run-dir", str(root / "local-bn")],
            "odd": ["train", *SMALL, "--batch-size", "33", "--run-dir", str(root / "odd")],
            "eval": ["eval", "knn", str(root / "single"), "--out", str(root / "two.json")],
            "syncbn": {"call": "test_distributed:syncbn_worker", "args": [str(root)]},
        }
        torch.manual_seed(1)
        torch.save({"x": torch.randn(8, 3, 5, 5), "w": torch.randn(8, 3)}, root / "bn-input.pt")
        outputs, stderr, codes = torchrun(list(jobs.values()), root)
        assert main(["train", "--resume", "--run-dir", str(root / "d2s"), "--epochs", "2"]) == 0
    finally:
        torch.set_num_threads(before)
    out = {name: o for name, o in zip(jobs, outputs)}
    code = {name: [c[i] for c in codes] for i, name in enumerate(jobs)}  # name -> [rank 0's, rank 1's]
    return root, out, stderr, code


def test_two_processes_train_what_one_does(runs):
    root, out, _, code = runs
    assert all(c == [0, 0] for name, c in code.items() if name != "odd"), code
    assert "2 processes x 16 SyncBN" in out["ddp"]
    trained = [name for name in out if name not in ("odd", "eval", "syncbn")]
    assert [out[name].count("done in") for name in trained] == [1] * len(trained)  # rank 0 alone logs
    assert_same_training(root / "single", root / "ddp")
    s = json.loads((root / "ddp" / "summary.json").read_text())
    assert (
        s["knn_top1_random_init"] == json.loads((root / "single" / "summary.json").read_text())["knn_top1_random_init"]
    )
    assert json.loads((root / "ddp" / "run.json").read_text())["world_size"] == 2


def test_checkpoints_resume_across_process_counts(runs):
    root, *_ = runs
    assert_same_training(root / "single", root / "d2s")  # torchrun, then one process
    assert_same_training(root / "single", root / "s2d")  # one process, then torchrun


@pytest.mark.parametrize("method", METHODS)
def test_method_hooks_and_collectives_under_torchrun(method, runs):
    """BYOL's EMA target and SwAV's prototypes (frozen in epoch 1) follow the same path as in one
    process; SimCLR's negatives and SwAV's Sinkhorn sums span both processes' images; MoCo v2's
    queue takes both processes' keys in one process's order (the queue is compared too)."""
    root, *_ = runs
    # SimCLR's cross-entropy at T 0.2 amplifies float noise more: after one step the difference is
    # thread-noise level (1e-6), after four 1.0e-4 (1 vs 2 threads: 6.9e-6); the losses stay equal.
    assert_same_training(root / f"single-{method}", root / f"ddp-{method}", tol=1e-3)
    w = model(root / f"ddp-{method}")
    if method == "byol":
        assert not torch.equal(w["target.0.conv1.weight"], w["encoder.0.conv1.weight"])  # it lags the online net


def test_no_sync_bn_and_a_batch_that_does_not_divide(runs):
    root, out, stderr, code = runs
    assert "2 processes x 16," in out["local-bn"] and "SyncBN" not in out["local-bn"]
    assert code["odd"] == [2, 2]  # both processes refuse, before anything is written
    assert stderr.count("--batch-size 33 is the global batch and must divide by the 2 processes") == 2
    assert not (root / "odd").exists()


def test_eval_knn_under_torchrun_gives_the_single_process_number(runs):
    root, out, _, code = runs
    a, b = (json.loads((root / f).read_text()) for f in ("one.json", "two.json"))
    assert a["top1"] == b["top1"] and a["per_class"] == b["per_class"]
    assert out["eval"].count("top-1") == 1


def test_compile_trains_and_its_checkpoint_loads_without_it(tmp_path, monkeypatch):
    """--compile on the smallest model that shows it (a two-layer backbone from Python, one step):
    training runs through torch.compile's graphs, the checkpoint has plain keys, and a resume
    without --compile loads it and trains on. torch.compile runs with the "aot_eager" backend:
    the same graph capture (dynamo) and autograd graphs (AOTAutograd) as inductor, without
    inductor's C++ code generation, which costs 30 s or more even for this model on a 2-core CPU
    with a cold cache (and over a minute for the ResNet-18). Inductor itself:

        SIMSIAM_TEST_INDUCTOR=1 pytest tests/test_distributed.py -k compile
    """
    from torch._dynamo.utils import counters

    backend = "inductor" if os.environ.get("SIMSIAM_TEST_INDUCTOR") == "1" else "aot_eager"
    if backend == "inductor":
        try:
            import torch._inductor.config as inductor
        except ImportError:
            pytest.skip("this torch build has no inductor (torch.compile's CPU backend)")
        monkeypatch.setattr(inductor, "compile_threads", 1)  # no pool of compile workers to start
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real(model, **{**kw, "backend": backend}))

    def backbone():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    cfg = tiny_config(tmp_path / "c", subset=32, batch_size=32, epochs=1, dim=16, pred_dim=8, proj_hidden=16)
    graphs = counters["stats"]["unique_graphs"]
    try:
        fit(cfg.replace(compile=True), backbone=backbone())
    except Exception as e:  # inductor needs a C++ compiler
        if "CppCompileError" in str(e) or "InvalidCxxCompiler" in str(e):
            pytest.skip("no working C++ compiler for torch.compile on this CPU")
        raise
    assert counters["stats"]["unique_graphs"] > graphs  # it did compile
    assert not any("_orig_mod" in k for k in model(tmp_path / "c"))  # plain keys
    fit(cfg.replace(resume=True, epochs=2, compile=False), backbone=backbone())
    assert len(metrics(tmp_path / "c")) == 2


def syncbn_worker(out):
    """In each torchrun process (torchrun_jobs.py): AllReduceBatchNorm's outputs, gradients and
    statistics on this rank's half of the batch in bn-input.pt."""
    import torch.distributed as dist

    from simsiam.parallel import AllReduceBatchNorm, convert_sync_bn

    rank, world = dist.get_rank(), dist.get_world_size()
    batch = torch.load(f"{out}/bn-input.pt")
    x, w = batch["x"], batch["w"]
    torch.manual_seed(0)
    net = convert_sync_bn(_bn_net(), torch.device("cpu"))
    assert isinstance(net[1], AllReduceBatchNorm) and isinstance(net[5], AllReduceBatchNorm)
    n = len(x) // world
    xs = x[rank * n : (rank + 1) * n].clone().requires_grad_(True)
    y = net(xs)
    (y * w[rank * n : (rank + 1) * n]).sum().div(n).backward()  # this rank's mean, as DDP's ranks
    grads = {k: p.grad.clone() for k, p in net.named_parameters()}
    for g in grads.values():
        dist.all_reduce(g)
        g /= world  # DDP's average
    result = {"y": y.detach(), "gx": xs.grad / world, "grads": grads, "bn": net[1].state_dict()}
    torch.save(result, f"{out}/bn-{rank}.pt")


def _bn_net():
    return nn.Sequential(
        nn.Conv2d(3, 4, 1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(100, 3),
        nn.BatchNorm1d(3, affine=False),
    )


def test_cpu_syncbn_is_batchnorm_on_the_global_batch(runs):
    """AllReduceBatchNorm on 2 gloo processes == BatchNorm on the whole batch in one process:
    outputs, input gradients, parameter gradients (after DDP's average) and running statistics."""
    root, *_ = runs
    batch = torch.load(root / "bn-input.pt")
    x, w = batch["x"], batch["w"]
    r = [torch.load(root / f"bn-{i}.pt") for i in range(2)]
    torch.manual_seed(0)
    net = _bn_net()
    xs = x.clone().requires_grad_(True)
    y = net(xs)
    (y * w).sum().div(len(x)).backward()
    torch.testing.assert_close(torch.cat([r[0]["y"], r[1]["y"]]), y.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat([r[0]["gx"], r[1]["gx"]]), xs.grad, rtol=0, atol=1e-7)
    for k, p in net.named_parameters():
        torch.testing.assert_close(r[0]["grads"][k], p.grad, rtol=1e-5, atol=1e-6, msg=k)
    for k, v in net[1].state_dict().items():
        torch.testing.assert_close(r[0]["bn"][k], v, msg=k)
