"""torchrun with two CPU processes (gloo) against one process with the same global batch.

Every rank draws what one process would (the permutation, and the augmentation parameters of the
whole global batch, of which it applies its own rows), and SyncBN gives BatchNorm the global
batch's statistics, so two processes train what one does up to float summation order. That
order alone already moves a single process's weights by about 1e-6 between 1 and 2 threads in
this setting (a low lr keeps the short runs from amplifying it), hence the tolerances below.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

SMALL = [
    "--subset",
    "64",
    "--batch-size",
    "32",
    "--lr",
    "0.1",
    "--width",
    "0.125",
    "--dim",
    "64",
    "--pred-dim",
    "16",
    "--proj-hidden",
    "64",
    "--prototypes",
    "16",
    "--knn-every",
    "1",
    "--no-report",
    "--log-every",
    "1",
]
TOL = 1e-4  # max |w_single - w_ddp| after 4 steps (measured: 1.3e-6; one process on 1 vs 2 threads: 1.0e-6)


def simsiam(*args, nproc=1, cwd=None):
    """`simsiam ARGS` in one process, or under `torchrun --standalone --nproc_per_node nproc`."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, *launcher, "-m", "simsiam", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )
    return res


def train(run_dir, *args, nproc=1):
    res = simsiam("train", *SMALL, "--run-dir", str(run_dir), *args, nproc=nproc)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


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


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    train(root / "single", "--epochs", "2")
    out = train(root / "ddp", "--epochs", "2", nproc=2)
    return root, out


def test_two_processes_train_what_one_does(runs):
    root, out = runs
    assert "2 processes x 16 SyncBN" in out.stdout and out.stdout.count("done in") == 1  # rank 0 alone logs
    assert_same_training(root / "single", root / "ddp")
    s = json.loads((root / "ddp" / "summary.json").read_text())
    assert (
        s["knn_top1_random_init"] == json.loads((root / "single" / "summary.json").read_text())["knn_top1_random_init"]
    )
    assert json.loads((root / "ddp" / "run.json").read_text())["world_size"] == 2


def test_checkpoints_resume_across_process_counts(runs, tmp_path):
    root, _ = runs
    train(tmp_path / "d2s", "--epochs", "1", nproc=2)  # torchrun, then one process
    assert simsiam("train", "--resume", "--run-dir", str(tmp_path / "d2s"), "--epochs", "2").returncode == 0
    assert_same_training(root / "single", tmp_path / "d2s")
    train(tmp_path / "s2d", "--epochs", "1")  # one process, then torchrun
    res = simsiam("train", "--resume", "--run-dir", str(tmp_path / "s2d"), "--epochs", "2", nproc=2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_training(root / "single", tmp_path / "s2d")


@pytest.mark.parametrize("method", ["byol", "swav", "simclr", "mocov2"])
def test_method_hooks_and_collectives_under_torchrun(method, tmp_path):
    """BYOL's EMA target and SwAV's prototypes (frozen in epoch 1) follow the same path as in one
    process; SimCLR's negatives and SwAV's Sinkhorn sums span both processes' images; MoCo v2's
    queue takes both processes' keys in one process's order (the queue is compared too)."""
    train(tmp_path / "single", "--method", method, "--epochs", "2")
    train(tmp_path / "ddp", "--method", method, "--epochs", "2", nproc=2)
    # SimCLR's cross-entropy at T 0.2 amplifies float noise more: after one step the difference is
    # thread-noise level (1e-6), after four 1.0e-4 (1 vs 2 threads: 6.9e-6); the losses stay equal.
    assert_same_training(tmp_path / "single", tmp_path / "ddp", tol=1e-3)
    w = model(tmp_path / "ddp")
    if method == "byol":
        assert not torch.equal(w["target.0.conv1.weight"], w["encoder.0.conv1.weight"])  # it lags the online net


def test_no_sync_bn_and_a_batch_that_does_not_divide(tmp_path):
    out = train(tmp_path / "local-bn", "--epochs", "1", "--no-sync-bn", nproc=2)
    assert "2 processes x 16," in out.stdout and "SyncBN" not in out.stdout
    res = simsiam("train", *SMALL, "--batch-size", "33", "--run-dir", str(tmp_path / "odd"), nproc=2)
    assert (
        res.returncode != 0 and "--batch-size 33 is the global batch and must divide by the 2 processes" in res.stderr
    )
    assert not (tmp_path / "odd").exists()


def test_eval_knn_under_torchrun_gives_the_single_process_number(runs, tmp_path):
    root, _ = runs
    one = simsiam("eval", "knn", str(root / "single"), "--out", str(tmp_path / "one.json"))
    two = simsiam("eval", "knn", str(root / "single"), "--out", str(tmp_path / "two.json"), nproc=2)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert a["top1"] == b["top1"] and a["per_class"] == b["per_class"]
    assert two.stdout.count("top-1") == 1


def test_compile_trains_and_its_checkpoint_loads_without_it(tmp_path):
    try:
        import torch._inductor  # noqa: F401
    except ImportError:
        pytest.skip("this torch build has no inductor (torch.compile's CPU backend)")
    res = simsiam(
        "train",
        *SMALL,
        "--epochs",
        "1",
        "--knn-every",
        "0",
        "--no-knn-random-init",
        "--compile",
        "--run-dir",
        str(tmp_path / "c"),
    )
    if res.returncode != 0 and ("CppCompileError" in res.stderr or "InvalidCxxCompiler" in res.stderr):
        pytest.skip("no working C++ compiler for torch.compile on this CPU")
    assert res.returncode == 0, res.stderr[-3000:]
    assert not any("_orig_mod" in k for k in model(tmp_path / "c"))  # plain keys
    res = simsiam("train", "--resume", "--run-dir", str(tmp_path / "c"), "--epochs", "2", "--no-compile")
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(metrics(tmp_path / "c")) == 2


def _bn_worker(rank, world, init, x, w, out):
    import torch.distributed as dist

    from simsiam.parallel import AllReduceBatchNorm, convert_sync_bn

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
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
    torch.save({"y": y.detach(), "gx": xs.grad / world, "grads": grads, "bn": net[1].state_dict()}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def _bn_net():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(3, 4, 1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(100, 3),
        nn.BatchNorm1d(3, affine=False),
    )


def test_cpu_syncbn_is_batchnorm_on_the_global_batch(tmp_path):
    """AllReduceBatchNorm on 2 gloo processes == BatchNorm on the whole batch in one process:
    outputs, input gradients, parameter gradients (after DDP's average) and running statistics."""
    import torch.multiprocessing as mp

    torch.manual_seed(1)
    x, w = torch.randn(8, 3, 5, 5), torch.randn(8, 3)
    mp.spawn(_bn_worker, args=(2, f"file://{tmp_path}/rendezvous", x, w, str(tmp_path)), nprocs=2)
    r = [torch.load(tmp_path / f"{i}.pt") for i in range(2)]
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
