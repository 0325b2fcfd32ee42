"""The `simsiam` command. Thin: parse arguments, build a Config (`configure`), call the library.

Every Config field and every method's own option is an option (`--batch-size`,
`--no-stop-gradient`, `--temperature`, ...); a preset gives the starting values and only the
options you type override it; an option of another method than the one chosen is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from .config import DATASETS, DEFAULT_PRESET, PRESETS, Config
from .configure import follow_the_images, from_preset, resume_config, with_file
from .errors import ConfigError, Interrupted, SimSiamError, warn
from .methods import METHODS
from .options import (
    ClusterOptions,
    CompareOptions,
    DuplicatesOptions,
    EmbedOptions,
    ExperimentOptions,
    FinetuneOptions,
    IndexOptions,
    KnnOptions,
    LinearOptions,
    Options,
    RankOptions,
    ReproduceOptions,
    SearchOptions,
    SelectOptions,
    TuneOptions,
)
from .records import LinearResult, Summary
from .runtime import log, resolve_device

_HIDDEN = {"preset", "resume"}  # set by --preset / --resume, which get their own help


def _add_options(parser, cls: type, hidden=(), preset_defaults: bool = False) -> None:
    """One argument per field of the option set `cls` (Config, KnnOptions, ...): its help, its
    default and its constraint come from the field's declaration. With `preset_defaults` (train)
    argparse keeps no default, so that only the options typed override the preset."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in hidden and not f.metadata.get("internal"):
            default = f.default if f.default is not dataclasses.MISSING else None
            where = "paper/Config default" if cls is Config else f"default {_show(default)}"
            text = f.metadata["help"] + (f": {' | '.join(METHODS)}" if cls is Config and f.name == "method" else "")
            _add_field(parser, f, hints[f.name], text, preset_defaults and where)


def _add_folder_command(parser, options: type, out_help: str, html_help: str) -> None:
    """The arguments of a command over a folder's features (duplicates, cluster, select)."""
    parser.add_argument("data_dir", metavar="DIR|INDEX")
    parser.add_argument("--backbone", metavar="RUN_DIR|CHECKPOINT", help="the backbone that embeds DIR")
    parser.add_argument("--out", metavar="FILE.csv", help=out_help)
    parser.add_argument("--html", metavar="FILE.html", help=html_help)
    _add_options(parser, options)


def _add_method_options(parser: argparse.ArgumentParser) -> None:
    """Every method's own options, one flag per name: one that several methods declare
    (--temperature) says each one's meaning and default; whether the chosen method has it is
    checked when the config is built (`configure.from_dict`), from the same declarations."""
    group = parser.add_argument_group("options of the methods (each only with a --method that has it)")
    declared: dict[str, list] = {}
    for name, method in METHODS.items():
        hints = typing.get_type_hints(method.Options)
        for f in dataclasses.fields(method.Options):
            declared.setdefault(f.name, []).append((name, f, hints[f.name]))
    for found in declared.values():
        _, f, hint = found[0]
        helps = [f"{name}: {g.metadata['help']} (default {_show(g.default)})" for name, g, _ in found]
        _add_field(group, f, hint, "; ".join(helps), "preset")


def _add_field(parser, f: dataclasses.Field, hint, text: str, preset_default: str | bool = False) -> None:
    """The argument of one declared field; `preset_default`: no argparse default (only the options
    typed override the preset), the help says where the default comes from."""
    flag = "--" + f.name.replace("_", "-")
    names = [flag, "-" + f.name] if len(f.name) == 1 else [flag]  # -k as well as --k
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args and type(None) in typing.get_args(hint) else hint
    allowed = f.metadata["check"].hint if "check" in f.metadata else ""
    text = text.replace("%", "%%")
    kw: dict
    if preset_default == "preset":
        kw = {"default": argparse.SUPPRESS, "help": text + (f" [{allowed}]" if allowed else "")}
    elif preset_default:
        rule = f"{allowed}; " if allowed else ""
        kw = {
            "default": argparse.SUPPRESS,
            "help": f"{text} [{rule}{preset_default}: {_show(f.default)}; presets may change it]",
        }
    else:
        kw = {"default": f.default, "help": text + (f" [{allowed}]" if allowed else "") + " (default: %(default)s)"}
    if base is bool:
        action = argparse.BooleanOptionalAction if preset_default else "store_true"
        parser.add_argument(*names, action=action, **kw)
    elif typing.get_origin(base) is tuple:
        parser.add_argument(*names, type=float, nargs=f.metadata["nargs"], metavar="X", **kw)
    else:
        parser.add_argument(*names, type=base, metavar=f.name.upper().split("_")[-1], **kw)


def _show(v) -> str:
    if isinstance(v, tuple):
        return " ".join(f"{x:g}" for x in v)
    return str(v)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simsiam",
        description="Self-supervised image representation learning with SimSiam (Chen & He, "
        "CVPR 2021): train, tune, doctor, evaluate, export, embed, index, search, duplicates, cluster, select, "
        "report. See README.md.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tr = sub.add_parser(
        "train",
        help="self-supervised pretraining",
        description="Pretrain a backbone with SimSiam. With no options: the embedded digits dataset, about two "
        "minutes on a CPU, printing kNN accuracy of the trained and of the random-init backbone. "
        "A preset sets the starting values; every option below overrides it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_run_options(tr)
    tr.add_argument(
        "--resume",
        action="store_true",
        default=argparse.SUPPRESS,
        help="continue the run in --run-dir from its last checkpoint, with its saved config "
        "(options given here override it, e.g. --epochs to train longer)",
    )
    _add_options(tr, Config, hidden=_HIDDEN, preset_defaults=True)
    _add_method_options(tr)

    tu = sub.add_parser(
        "tune",
        help="choose the lr and weight decay for your data without labels (successive halving)",
        description="Label-free choice of the lr and weight decay: short runs of every candidate, the best "
        "1/eta trained eta times longer, and so on within --budget-minutes. A run the doctor does not call "
        "healthy, or whose effective rank of z slides towards collapse, is ruled out; the rest are ranked by "
        "view retrieval (docs/health.md). Writes OUT/best.json for `simsiam train --config OUT/best.json`. "
        "The options of `simsiam train` set the run being tuned.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_run_options(tu)
    _add_options(tu, TuneOptions)
    _add_options(tu, Config, hidden=_HIDDEN | {"run_dir"}, preset_defaults=True)
    _add_method_options(tu)

    ev = sub.add_parser("eval", help="evaluate a trained backbone (kNN, linear probe, or effective rank)")
    ev_sub = ev.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    protocols: list[tuple[str, str, type[Options]]] = [
        ("knn", "weighted kNN on frozen features (train split = bank, test = queries)", KnnOptions),
        ("linear", "linear classifier on frozen pool features (paper App. A protocol)", LinearOptions),
        ("rank", "effective rank (RankMe) of the frozen features: a label-free health measure", RankOptions),
        (
            "finetune",
            "fine-tune the whole backbone + a linear head on a class-balanced fraction of the labels "
            "(SimCLR's semi-supervised protocol); --from-scratch: the same from random init",
            FinetuneOptions,
        ),
    ]
    for name, what, options in protocols:
        protocol = ev_sub.add_parser(name, help=what, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        _add_source_and_data(protocol)
        _add_options(protocol, options)

    ex = sub.add_parser(
        "export", help="backbone weights as safetensors + a torchvision/timm-loadable state_dict, or as ONNX"
    )
    ex.add_argument("source", metavar="RUN_DIR|CHECKPOINT")
    ex.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="output: FILE.safetensors (the plain state_dict goes beside it as FILE.pth), FILE.onnx, or "
        "for --format official any name (e.g. checkpoint_0099.pth.tar)",
    )
    ex.add_argument(
        "--format",
        choices=["safetensors", "onnx", "official"],
        default="safetensors",
        help='onnx: images (N, 3, S, S) -> features (N, D), any N (pip install "simsiam[onnx]"); official: '
        "{'state_dict': {'module.encoder.*', 'module.predictor.*'}} as facebookresearch/simsiam writes it, "
        "for its main_lincls.py --pretrained (torchvision ImageNet ResNets at width 1)",
    )

    em = sub.add_parser("embed", help="backbone features of every image in a folder, to .npy + .csv of paths")
    em.add_argument("source", metavar="RUN_DIR|CHECKPOINT")
    em.add_argument("--data-dir", required=True, help="folder of images (any depth)")
    em.add_argument("--out", required=True, metavar="FILE.npy", help="features; paths go to FILE.csv")
    em.add_argument("--projector", action="store_true", help="also projector outputs z to FILE.projector.npy")
    _add_options(em, EmbedOptions)

    ix = sub.add_parser(
        "index",
        help="a similarity-search index (FAISS) of a folder's features; --add DIR adds images to one",
        description="Embed every image under --data-dir through the backbone of RUN_DIR|CHECKPOINT into a "
        "FAISS index folder (--out): exact search up to 20000 images, HNSW beyond (its recall@10 against exact "
        "measured and printed). With --add DIR, only the images the index does not hold yet are embedded and "
        "added (RUN_DIR|CHECKPOINT: the index's own backbone when omitted).",
    )
    ix.add_argument("source", nargs="?", metavar="RUN_DIR|CHECKPOINT")
    ix.add_argument("--data-dir", help="folder of images (any depth) to index")
    ix.add_argument("--add", metavar="DIR", help="add the new images under DIR to the index at --out")
    ix.add_argument("--out", required=True, metavar="INDEX", help="the index folder")
    _add_options(ix, IndexOptions)

    se = sub.add_parser(
        "search",
        help="the nearest images of an index to query images",
        description="For each query image (files, or every image under a folder): its -k nearest images in "
        "INDEX by cosine similarity of the backbone features, printed, and as CSV/JSON (--out) and an HTML "
        "gallery (--html). The query goes through the index's own backbone; another one is refused.",
    )
    se.add_argument("index", metavar="INDEX")
    se.add_argument("queries", nargs="+", metavar="QUERY")
    se.add_argument("--out", metavar="FILE.csv|FILE.json", help="the results table")
    se.add_argument("--html", metavar="FILE.html", help="a gallery: each query beside its neighbours")
    se.add_argument("--backbone", metavar="RUN_DIR|CHECKPOINT", help="where the index's backbone is now, if moved")
    _add_options(se, SearchOptions)

    du = sub.add_parser(
        "duplicates",
        help="exact and near-duplicate images of a folder, in groups (CSV, HTML)",
        description="Groups of images with the same bytes, or whose backbone features have a cosine similarity "
        "of at least --threshold (joined in chains: connected components). DIR: a folder of images (with "
        "--backbone) or an index folder written by `simsiam index` (its features are reused). Prints the groups "
        "and how many pairs other thresholds would give.",
    )
    _add_folder_command(du, DuplicatesOptions, "one row per image in a group", "a gallery: each group side by side")

    cl = sub.add_parser(
        "cluster",
        help="k-means of a folder's features: pseudo-labels (CSV) and a gallery per cluster",
        description="Spherical k-means (FAISS) of the backbone features of DIR (with --backbone) or of an index "
        "folder. Without -k, K is chosen by silhouette over --k-min..--k-max (printed). Writes the cluster of "
        "every image (--out) and a gallery of each cluster's most typical images (--html); when the images sit "
        "in class sub-folders, prints NMI and ARI against them.",
    )
    _add_folder_command(
        cl,
        ClusterOptions,
        "path, cluster, rank in the cluster, similarity to its centre",
        "a gallery: each cluster's most typical images",
    )

    sl = sub.add_parser(
        "select",
        help="which images to label first (typiclust, kcenter or random), from the features alone",
        description="Chooses --budget images of DIR (with --backbone) or of an index folder to label first. "
        "typiclust (default; Hacohen et al., ICML 2022): the most typical image of each of BUDGET k-means "
        "clusters, largest first. kcenter (Sener & Savarese, 2018): farthest-first traversal. random: a seeded "
        "draw. Prints and writes (--out) the images in the order picked.",
    )
    _add_folder_command(sl, SelectOptions, "order, path", "a gallery of the images picked")

    from .experiments.reproduce import GROUPS

    rr = sub.add_parser(
        "reproduce",
        help="the paper's ablations and Sec. 5 experiments, tabulated beside its numbers",
        description="Train every variant of an experiment group and write OUT/<group>/table.md (kNN, z-std, "
        "collapse, the paper's ImageNet number) and z_std.png. --scale cpu (default) runs the embedded "
        "digits at a size that takes about 40 s per variant on a CPU; --scale paper the paper's "
        "ImageNet setting (GPUs, --data-dir). Variants finished by the same simsiam code are reused "
        "when run again (--fresh retrains).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    rr.add_argument("name", choices=[*GROUPS, "all"], metavar="NAME", help=f"one of: {', '.join(GROUPS)}, all")
    rr.add_argument("--scale", choices=["cpu", "paper"], default="cpu")
    rr.add_argument("--out", default="runs/reproduce", help="where the runs and tables go")
    rr.add_argument(
        "--check",
        action="store_true",
        help="exit non-zero, naming them, when claims of the paper did not hold by 3 seed stds (needs --seeds 3)",
    )
    _add_experiment_options(rr, ReproduceOptions)

    cp = sub.add_parser(
        "compare",
        help="SimSiam vs SimCLR, BYOL, SwAV, MoCo v2: same data, backbone, augmentation and budget, one table",
        description="Train each method (in its own process) for the same epochs, probe it linearly, and write "
        "OUT/comparison.md (kNN, linear-fast, images/s, peak memory, the paper's ImageNet numbers) and "
        "OUT/knn.png (kNN per epoch of every method). Methods finished by the same simsiam code are "
        "reused when run again (--fresh retrains).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    cp.add_argument("methods", nargs="+", metavar="METHOD", help=f"{' '.join(METHODS)} (any of them)")
    cp.add_argument(
        "--scale",
        choices=["cpu", "paper"],
        default="cpu",
        help="cpu: digits, 10 epochs each; paper: ImageNet ResNet-50, 100 epochs (GPUs, --data-dir)",
    )
    cp.add_argument("--out", default="runs/compare", help="where the runs and the table go")
    cp.add_argument(
        "--own-augmentation",
        action="store_true",
        help="each method with its own augmentation defaults (e.g. BYOL's solarize) instead of SimSiam's",
    )
    _add_experiment_options(cp, CompareOptions)

    dr = sub.add_parser(
        "doctor",
        help="the state of a run, no labels needed: healthy, collapsed (complete, dimensional, of the head), "
        "not learning or diverged, with the likely causes and the commands to try",
        description="Read a run directory (finished or still training) and name its state from its effective "
        "rank, z-std and loss (rules and their measurements: docs/health.md). Exit status 0 when healthy, "
        "1 when not. Also writes RUN_DIR/doctor.json.",
    )
    dr.add_argument("run_dir", metavar="RUN_DIR")
    dr.add_argument("--json", action="store_true", help="print the verdict as JSON instead of text")

    rp = sub.add_parser("report", help="plots and a Markdown summary of a run, in RUN_DIR/report/")
    rp.add_argument("run_dir", metavar="RUN_DIR")
    rp.add_argument("--no-retrieval", action="store_true", help="skip the nearest-neighbour picture")
    rp.add_argument("--no-embedding-map", action="store_true", help="skip the t-SNE map")
    return parser


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """--preset and --config: where a run's options start (train, tune)."""
    presets = "; ".join(f"{name}" for name in PRESETS)
    p.add_argument(
        "--preset",
        default=argparse.SUPPRESS,
        help=f"starting values: {presets} (default {DEFAULT_PRESET}, or folder when --data-dir is given; "
        "cifar10 and imagenet are the paper's recipes, cifar10-cpu a CPU-scale variant)",
    )
    p.add_argument(
        "--config",
        metavar="FILE.json",
        default=argparse.SUPPRESS,
        help="start from a saved config (e.g. RUN_DIR/config.json) instead of a preset",
    )


def _add_experiment_options(p: argparse.ArgumentParser, options: type[ExperimentOptions]) -> None:
    _add_options(p, options)
    p.add_argument(
        "--fresh",
        action="store_true",
        help="train every run again even if the same configuration already finished under --out",
    )
    p.add_argument("--preset", help="base preset instead of the scale's (digits at cpu, imagenet at paper)")
    p.add_argument("--data-dir", help="data for every run (a folder or a torchvision copy)")
    p.add_argument("--dataset", choices=DATASETS)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field in every run, e.g. --set width=0.5 (JSON values)",
    )


def _experiment_overrides(args, options: type[ExperimentOptions]) -> dict:
    """`reproduce`'s and `compare`'s options as the overrides of every run (`experiments.overrides`)."""
    from .experiments.runner import overrides

    checked = options.from_args(args)
    return overrides(args.scale, args.data_dir, args.dataset, checked.epochs, checked.device, args.set)


def _add_source_and_data(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        metavar="RUN_DIR|CHECKPOINT",
        help="a run directory, one of its checkpoint.pt, or an official SimSiam checkpoint",
    )
    p.add_argument("--data-dir", help="evaluate on this ImageFolder tree (default: the run's own data)")
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        help="evaluate on this dataset (default: the run's)",
    )
    p.add_argument("--out", metavar="FILE.json", help="where the result goes (default: beside the source)")


def config_from_args(ns: argparse.Namespace) -> Config:
    """The Config `simsiam train`'s arguments ask for: --resume's, --config's or a preset's, with
    the options typed on top (the folder preset's crop size follows the images unless given)."""
    given = {k: v for k, v in vars(ns).items() if k not in ("command", "config", "preset")}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    if given.get("resume"):
        if "run_dir" not in given:
            raise ConfigError("--resume needs --run-dir DIR (the run to continue)")
        return resume_config(given["run_dir"], given)
    if "config" in ns:
        return with_file(ns.config, given)
    preset = getattr(ns, "preset", "folder" if "data_dir" in given else DEFAULT_PRESET)  # --data-dir alone: photos
    if preset == "folder" and "image_size" not in given and given.get("data_dir"):
        given = {**follow_the_images(given["data_dir"], given), **given}
    return from_preset(preset, **given)


# --- one function per subcommand; each gets the parsed arguments -----------------------------


def _train(args) -> None:
    from .engine import train

    log(_describe(train(config_from_args(args))))


def _tune(args) -> int:
    from .experiments.tune import tune

    options = TuneOptions.from_args(args)
    run_args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in dataclasses.asdict(options)})
    base = config_from_args(run_args)
    best, trials, path = tune(
        base,
        options.out,
        list(options.lr_factors),
        list(options.wd_factors),
        options.budget_minutes,
        options.first_epochs,
        options.eta,
        log=log,
    )
    lines = ["| rung | lr | weight decay | epochs | doctor | view retrieval | |", "|---|---|---|---|---|---|---|"]
    for t in trials:
        score = f"{100 * t.score:.2f}%" if t.score is not None else f"ruled out: {t.why_out}"
        mark = "**pick**" if t is best else ""
        lr, wd = base.lr * t.lr_factor, base.weight_decay * t.wd_factor
        lines.append(f"| {t.rung + 1} | {lr:g} | {wd:g} | {t.epochs} | {t.state} | {score} | {mark} |")
    log("\n".join(lines))
    log(
        f"pick: lr {base.lr * best.lr_factor:g}, weight decay {base.weight_decay * best.wd_factor:g}; "
        f"train it with `simsiam train --config {path} --run-dir RUN_DIR`"
    )
    return 0


def _eval(args) -> None:
    from .evaluation import evaluate, evaluate_rank
    from .parallel import process_group

    if args.protocol == "rank":
        options = dataclasses.asdict(RankOptions.from_args(args))
        with process_group(resolve_device(args.device)):
            r = evaluate_rank(args.source, data_dir=args.data_dir, dataset=args.dataset, out=args.out, **options)
        log(
            f"effective rank {r.rank:.1f} of at most {r.rank_max} ({r.num_images} images, {r.feature_dim}-d "
            f"features; 1 = complete collapse) -> {r.path}"
        )
        return

    if args.protocol == "finetune":
        _finetune(args)
        return
    options = dataclasses.asdict((KnnOptions if args.protocol == "knn" else LinearOptions).from_args(args))
    with process_group(resolve_device(args.device)):  # under torchrun each process extracts a share of the features
        res = evaluate(
            args.source,
            args.protocol,
            data_dir=args.data_dir,
            dataset=args.dataset,
            out=args.out,
            **options,
        )
    top5 = f", top-5 {100 * res.top5:.2f}%" if res.top5 is not None else ""
    if res.collapsed:  # the accuracy of identical features is the class prior's: not a measure of anything
        log(
            f"{res.protocol}: COLLAPSED: the backbone gives (almost) the same feature for every image (spread "
            f"{res.feature_spread:.1e}); its top-1 {100 * res.top1:.2f}% on {res.num_test} test images is chance, "
            f"not a measure of the features -> {res.path}"
        )
        return
    if isinstance(res, LinearResult) and res.top1_per_epoch:  # the paper's protocol: which epoch's top-1
        final, best = 100 * res.top1_per_epoch[-1], 100 * max(res.top1_per_epoch)
        if res.report == "final":
            top5 += f"; the final epoch's (best: epoch {res.best_epoch}, {best:.2f}%)"
        else:
            top5 += f"; the best epoch's, epoch {res.best_epoch} (final: {final:.2f}%)"
    log(f"{res.protocol} top-1 {100 * res.top1:.2f}%{top5} ({res.num_test} test images) -> {res.path}")


def _finetune(args) -> None:
    from .evaluation import evaluate_finetune

    options = dataclasses.asdict(FinetuneOptions.from_args(args))
    r = evaluate_finetune(args.source, data_dir=args.data_dir, dataset=args.dataset, out=args.out, **options)
    top5 = f", top-5 {100 * r.top5:.2f}%" if r.top5 is not None else ""
    log(
        f"finetune ({'random init' if r.init == 'random' else 'pretrained'}) on {r.num_labeled} labelled images "
        f"of {r.num_train} ({r.epochs} epochs, {r.steps} steps, {r.seconds:.0f} s): top-1 {100 * r.top1:.2f}%{top5} "
        f"({r.num_test} test images) -> {r.path}"
    )
    log(f"labelled images: {r.subset_file} (reuse with --subset-file to compare another backbone on them)")
    if r.model_file:
        log(f"fine-tuned classifier: {r.model_file} (safetensors: backbone.*, head.*; classes in its metadata)")


def _export(args) -> None:
    from .export import export_backbone, export_official, export_onnx

    if args.format == "official":
        out = export_official(args.source, args.out)
        log(f"official SimSiam checkpoint written to {out} (main_lincls.py --pretrained {out})")
        return
    if args.format == "onnx":
        log(f"backbone written to {export_onnx(args.source, args.out)} (ONNX)")
        return
    st, pth = export_backbone(args.source, args.out)
    log(f"backbone written to {st} (safetensors) and {pth} (torch state_dict)")


def _embed(args) -> None:
    from .export import embed_folder

    options = EmbedOptions.from_args(args)
    res = embed_folder(
        args.source,
        args.data_dir,
        args.out,
        batch_size=options.batch_size,
        projector=args.projector,
        device=resolve_device(options.device),
    )
    skipped = f" ({res['num_skipped']} unreadable files skipped)" if res["num_skipped"] else ""
    log(f"{res['num_images']} x {res['dim']} features -> {res['features']}, paths -> {res['paths']}{skipped}")


def _index(args) -> None:
    from .search import add, create

    options = IndexOptions.from_args(args)
    device = resolve_device(options.device)
    common: dict[str, typing.Any] = dict(batch_size=options.batch_size, device=device, workers=options.workers, log=log)
    if args.add:
        if args.data_dir:
            raise ConfigError("give --data-dir to build an index, or --add DIR to add to one, not both")
        meta = add(args.out, args.add, args.source, **common)
        log(f"added {meta['added']} images -> {args.out} ({meta['count']} in all)")
    else:
        if not args.source or not args.data_dir:
            raise ConfigError("give RUN_DIR|CHECKPOINT and --data-dir to build an index (or --add DIR to add to one)")
        meta = create(args.source, args.data_dir, args.out, kind=options.kind, **common)
        skipped = f", {meta['skipped']} unreadable files skipped" if meta["skipped"] else ""
        log(
            f"indexed {meta['count']} images ({meta['dim']}-d, {meta['embed_images_per_second']:.0f} images/s{skipped})"
            f" -> {args.out}"
        )
    search = "exact search" if meta["kind"] == "exact" else f"HNSW (M 32, efSearch {meta['ef_search']})"
    log(f"index: {search}, recall@10 against exact {meta['recall_at_10']:.3f}")


def _search(args) -> None:
    from .search import search, search_gallery, write_rows

    options = SearchOptions.from_args(args)
    device = resolve_device(options.device)
    rows = search(args.index, args.queries, options.k, args.backbone, options.batch_size, device)
    query = None
    for r in rows:
        if r["query"] != query:
            query = r["query"]
            print(query)
        print(f"  {r['rank']:3d}. {r['score']:.4f}  {r['path']}")
    if args.out:
        log(f"results -> {write_rows(rows, args.out)}")
    if args.html:
        log(f"gallery -> {search_gallery(rows, args.html)}")


def _duplicates(args) -> None:
    from .duplicates import find, write_csv, write_html

    o = DuplicatesOptions.from_args(args)
    device = resolve_device(o.device)
    found = find(args.data_dir, args.backbone, o.threshold, o.batch_size, device, o.workers, log=log)
    groups, paths = found["groups"], found["paths"]
    exact = sum(g["kind"] == "exact" for g in groups)
    in_groups = sum(len(g["members"]) for g in groups)
    print(
        f"{len(paths)} images: {len(groups)} groups of duplicates ({exact} of identical files, "
        f"{len(groups) - exact} near), {in_groups} images in them"
    )
    for n, g in enumerate(groups[:20], 1):
        print(f"group {n} ({g['kind']}, {len(g['members'])} images):")
        for i, s in zip(g["members"], g["similarity"]):
            print(f"  {s:.4f}  {paths[i]}")
    if len(groups) > 20:
        print(f"... and {len(groups) - 20} more groups (--out FILE.csv lists them all)")
    sweep = ", ".join(f">= {t:g}: {n}" for t, n in found["sweep"].items())
    print(f"near-duplicate pairs among nearest neighbours at other thresholds: {sweep}")
    if args.out:
        log(f"groups -> {write_csv(found, args.out)}")
    if args.html:
        log(f"gallery -> {write_html(found, args.html, o.threshold)}")


def _cluster(args) -> None:
    from .cluster import by_cluster, cluster, write_csv, write_html

    o = ClusterOptions.from_args(args)
    device = resolve_device(o.device)
    res = cluster(
        args.data_dir, args.backbone, o.k, (o.k_min, o.k_max), o.seed, o.batch_size, device, o.workers, log=log
    )
    sizes = [len(m) for m in by_cluster(res)]
    print(f"{len(res['paths'])} images in {res['k']} clusters of {', '.join(map(str, sizes))} images")
    if res["nmi"] is not None:
        print(
            f"against the {res['num_classes']} sub-folders (never used to cluster): NMI {res['nmi']:.3f}, "
            f"ARI {res['ari']:.3f}"
        )
    if args.out:
        log(f"clusters -> {write_csv(res, args.out)}")
    if args.html:
        log(f"gallery -> {write_html(res, args.html)}")


def _select(args) -> None:
    from .gallery import write_gallery
    from .search import folder_vectors, write_rows
    from .select import check_budget, choose

    o = SelectOptions.from_args(args)
    budget = o.budget
    if budget is None:
        raise ConfigError("give --budget N: how many images to label")
    device = resolve_device(o.device)
    fits = lambda n: check_budget(budget, n)  # noqa: E731
    paths, vectors, _ = folder_vectors(args.data_dir, args.backbone, o.batch_size, device, o.workers, check=fits)
    picks = choose(vectors, budget, o.strategy, o.seed)
    rows = [{"order": n, "path": paths[i]} for n, i in enumerate(picks, 1)]
    print(f"{budget} of {len(paths)} images to label first ({o.strategy}, seed {o.seed}):")
    for r in rows:
        print(f"  {r['order']:4d}. {r['path']}")
    if args.out:
        log(f"selection -> {write_rows(rows, args.out)}")
    if args.html:
        items = [(paths[i], str(n)) for n, i in enumerate(picks, 1)]
        log(f"gallery -> {write_gallery(args.html, 'simsiam select', [(o.strategy, items)])}")


def _reproduce(args) -> None:
    from .experiments.reproduce import GROUPS, reproduce

    names = list(GROUPS) if args.name == "all" else [args.name]
    reproduce(
        names,
        args.out,
        args.scale,
        args.seeds,
        args.preset,
        log=log,
        fresh=args.fresh,
        check=args.check,
        **_experiment_overrides(args, ReproduceOptions),
    )


def _compare(args) -> None:
    from .experiments.compare import compare

    compare(
        args.methods,
        args.out,
        args.scale,
        args.preset,
        args.own_augmentation,
        log=log,
        fresh=args.fresh,
        seeds=args.seeds,
        **_experiment_overrides(args, CompareOptions),
    )
    log((Path(args.out) / "comparison.md").read_text() + f"plot: {Path(args.out) / 'knn.png'}")


def _doctor(args) -> int:
    from .doctor import describe, diagnose, write

    verdict = diagnose(args.run_dir)
    try:
        write(verdict, args.run_dir)
    except SimSiamError as e:  # a read-only run directory still gets its verdict
        warn(str(e))
    print(json.dumps(verdict.to_json(), indent=2) if args.json else describe(verdict, args.run_dir))
    return 0 if verdict.healthy else 1


def _report(args) -> None:
    from .report import write_report

    md = write_report(args.run_dir, retrieval=not args.no_retrieval, embedding_map=not args.no_embedding_map)
    log(f"report written: {md}")


COMMANDS = {
    "train": _train,
    "eval": _eval,
    "export": _export,
    "embed": _embed,
    "index": _index,
    "search": _search,
    "duplicates": _duplicates,
    "cluster": _cluster,
    "select": _select,
    "reproduce": _reproduce,
    "compare": _compare,
    "report": _report,
    "doctor": _doctor,
    "tune": _tune,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args) or 0
    except Interrupted as e:  # SIGINT / SIGTERM, after the checkpoint was written
        print(f"simsiam: {e}", file=sys.stderr)
        return e.exit_code
    except SimSiamError as e:
        print(f"simsiam: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file the library did not expect to fail (full disk, permissions)
        where = f" {e.filename}" if e.filename else ""
        print(
            f"simsiam: error: cannot access{where} ({e.strerror or e}); free disk space or fix the permissions",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training loop
        print("simsiam: interrupted; the last checkpoint written is kept (continue with --resume)", file=sys.stderr)
        return 130


def _describe(s: Summary) -> str:
    lines = [f"done in {s.train_seconds:.0f} s ({s.images_per_second:.0f} images/s); run in {s.run_dir}"]
    if s.knn_top1 is None:
        knn = "kNN: not measured (the data has no labels)"
    else:
        knn = f"kNN top-1 ({s.num_test} test images): trained {100 * s.knn_top1:.2f}%"
        if s.knn_top1_random_init is not None:
            gain = 100 * (s.knn_top1 - s.knn_top1_random_init)
            knn += f" vs random init {100 * s.knn_top1_random_init:.2f}% ({gain:+.2f} points)"
    lines.append(knn)
    state = "under the collapse line" if s.collapsed else "no collapse"
    lines.append(f"z-std {s.z_std:.4f} (healthy ~1/sqrt(d) = {s.z_std_healthy:.4f}): {state}")
    if s.rank_backbone is not None and s.rank_z is not None:
        lines.append(
            f"effective rank (no labels needed; 1 = collapsed): features {s.rank_backbone:.1f} of at most "
            f"{s.rank_backbone_max}, z {s.rank_z:.1f} of at most {s.rank_z_max}"
        )
    if s.health is not None:
        recovered = f" after {s.recoveries} recover{'y' if s.recoveries == 1 else 'ies'}" if s.recoveries else ""
        lines.append(f"health: {s.health}{recovered} (`simsiam doctor {s.run_dir}` for the details)")
    return "\n".join(lines)
