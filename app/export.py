"""`headserve export encoder|head|multi-head|prompts|example|encoded` and `headserve repo validate|list|remove|pin`.

Flags to the exporter's typed options (RuntimeOptions); writing and checking the repository is headserve.export's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from headserve.app.arguments import add_encoder_args, add_pooling_args

if TYPE_CHECKING:
    from headserve.export.model_config import RuntimeOptions


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export encoders and heads into a Triton model repository")
    what = p.add_subparsers(dest="what", required=True, metavar="WHAT")

    enc = what.add_parser("encoder", help="export an encoder (preprocessing in the graph)")
    enc.add_argument("name", help="encoder registry name, e.g. clip:ViT-B-32")
    enc.add_argument("--encoder-weights", default=None, metavar="PATH")
    add_repo_args(enc)
    add_pooling_args(enc)
    enc.set_defaults(func=_export_encoder, encoder=None)

    head = what.add_parser("head", help="export a head artifact and its ensemble (and its encoder if missing)")
    head.add_argument("artifact", type=Path, help="directory with meta.json and head.safetensors")
    add_repo_args(head)
    add_encoder_args(head, default="", default_help="the encoder the artifact's meta.json names")
    add_server_arg(head)
    head.set_defaults(func=_export_head)

    multi = what.add_parser("multi-head", help="one ensemble running an encoder once for several of its heads")
    multi.add_argument("heads", nargs="+", help="per-head ensemble names already in the repository (same encoder)")
    multi.add_argument("--repo", type=Path, required=True, help="model repository directory")
    multi.add_argument("--runtime", choices=("local", "production"), default="local")
    multi.add_argument("--name", default=None, help="ensemble name (default heads_<encoder>)")
    add_server_arg(multi)
    multi.set_defaults(func=_export_multi_head)

    prompts = what.add_parser("prompts", help="CLIP heads: bake prompt embeddings into a similarity model for the "
                                             "client's prefilter")
    prompts.add_argument("head", help="per-head ensemble name already in the repository")
    prompts.add_argument("--prompt", action="append", required=True, metavar="CLASS:TEXT",
                         help='class name, a colon, the prompt text, e.g. "cat:a photo of a cat"; repeat')
    add_repo_args(prompts)
    prompts.add_argument("--encoder-weights", default=None, metavar="PATH")
    prompts.set_defaults(func=_export_prompts)

    example = what.add_parser("example", help="the example repository (untrained heads on the tiny encoder twins) "
                                              "whose configs model_repository/ commits")
    add_repo_args(example)
    example.set_defaults(func=_export_example, runtime="production")

    encoded = what.add_parser("encoded", help="the <head>_encoded ensemble: JPEG/PNG bytes in, decoded and resized "
                                              "on the server exactly as training did")
    encoded.add_argument("head", help="per-head ensemble name already in the repository")
    add_repo_args(encoded)
    add_server_arg(encoded)
    encoded.set_defaults(func=_export_encoded)

    repo = sub.add_parser("repo", help="check or list a Triton model repository")
    action = repo.add_subparsers(dest="action", required=True, metavar="ACTION")
    validate = action.add_parser("validate", help="check configs against ONNX files, ensemble wiring, labels, "
                                                  "encoder fingerprints")
    validate.add_argument("repository", type=Path)
    validate.set_defaults(func=_repo_validate)
    listing = action.add_parser("list", help="one line per model: kind, versions, pinned version, runtime, encoder, "
                                              "classes")
    listing.add_argument("repository", type=Path)
    listing.set_defaults(func=_repo_list)
    remove = action.add_parser("remove", help="remove a head: its ensemble, _head, _encoded and _prompts models "
                                              "(and unload them from a `headserve serve` on --repo)")
    remove.add_argument("head", help="head ensemble name, as `headserve repo list` shows it")
    remove.add_argument("--repo", type=Path, required=True, help="model repository directory")
    remove.add_argument("--with-multi-head", action="store_true",
                        help="also remove the multi-head ensembles that serve the head (refused without it)")
    remove.add_argument("--prune-encoder", action="store_true",
                        help="also remove the head's encoder (and its decoder) when no other head runs on it")
    add_server_arg(remove, "unload the removed models there")
    remove.set_defaults(func=_repo_remove)
    pin = action.add_parser("pin", help="roll a head back: its ensemble answers with head version N (its classes, "
                                        "labels and head id) until --latest or the next export")
    pin.add_argument("head", help="head ensemble name, as `headserve repo list` shows it")
    pin.add_argument("--repo", type=Path, required=True, help="model repository directory")
    which = pin.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", type=int, metavar="N", help="the head version to answer with (repo list's "
                                                                "versions of HEAD_head)")
    which.add_argument("--latest", action="store_true", help="unpin: answer with the newest version again")
    add_server_arg(pin, "load the pinned version there and wait until it is ready")
    pin.set_defaults(func=_repo_pin)


def add_server_arg(p: argparse.ArgumentParser,
                   what: str = "load the new versions there and wait until they are ready") -> None:
    p.add_argument("--server", action="append", default=None, metavar="HOST:PORT|dns:///SERVICE:PORT",
                   help=f"gRPC address of a Triton in --model-control-mode=explicit: {what}. Repeat for several "
                        "replicas, or give dns:///SERVICE:PORT for every replica behind a Kubernetes headless "
                        "Service (deploy/README.md); exits non-zero if any replica failed. Without it, a "
                        "`headserve serve` running on --repo is found by itself")


def add_repo_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--repo", type=Path, required=required, default=None,
                   help="model repository directory" + ("" if required else ": also export the head into it"))
    p.add_argument("--runtime", choices=("local", "production"), default="local",
                   help="local: python backend + ONNX Runtime (pytriton's tritonserver); "
                        "production: onnxruntime_onnx on GPUs (official containers)")
    both = p.add_argument_group("instances and threads (both runtimes)")
    both.add_argument("--instance-kind", choices=("gpu", "cpu"), default=None,
                      help="where the ONNX models run (default: gpu in production, cpu locally; locally gpu runs "
                           "ONNX Runtime's CUDA provider and falls back to the CPU with the reason in the log)")
    both.add_argument("--instances", type=int, default=1, help="encoder instances (per GPU for gpu; default 1)")
    both.add_argument("--cpu-threads", type=int, default=None,
                      help="ONNX Runtime intra-op threads per encoder instance on a CPU (default: production 4; "
                           "local 0 = the serving machine's cores shared among the instances)")
    prod = p.add_argument_group("production runtime")
    prod.add_argument("--tensorrt", choices=("FP32", "FP16"), default=None,
                      help="run through TensorRT at this precision, with engine and timing caches")
    prod.add_argument("--trt-cache-dir", default="/trt-cache",
                      help="where the serving container keeps TensorRT engine and timing caches")
    prod.add_argument("--no-warmup", dest="warmup", action="store_false", help="omit model_warmup")
    p.add_argument("--engine", choices=("auto", "onnxruntime", "openvino"), default="auto",
                   help="what runs the encoder: openvino (CPU; Triton's openvino backend in production) or "
                        "onnxruntime (CPU or GPU). auto: export encoder picks OpenVINO bf16 on a CPU with bf16 "
                        "arithmetic, else fp32; export head serves the engine its embeddings were computed with")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="encoder compute precision: fp32 (ONNX Runtime unless --engine openvino), bf16 (OpenVINO on "
                        "CPUs with bf16), fp16 (ONNX Runtime, GPUs). Every CPU engine is checked against the fp32 "
                        "PyTorch encoder on real crops and refused below its minimum cosine (bf16: 0.999)")


def production_options(args: argparse.Namespace) -> RuntimeOptions:
    """The runtime knobs of the command line as a typed config (OptionsError names a bad count)."""
    from headserve.export.model_config import InstanceKind, RuntimeOptions, TensorRTOptions

    trt = TensorRTOptions(precision=args.tensorrt, cache_dir=args.trt_cache_dir) if args.tensorrt else None
    kind = InstanceKind[f"KIND_{args.instance_kind.upper()}"] if args.instance_kind else None
    return RuntimeOptions(kind=kind, instances=args.instances, cpu_threads=args.cpu_threads, tensorrt=trt,
                          warmup=args.warmup)


def _export_encoder(args: argparse.Namespace) -> int:
    from headserve.backbones import load_encoder
    from headserve.encoders import get_encoder
    from headserve.export.engine import check_choice_usable, choose_engine
    from headserve.export.model_config import InstanceKind, Runtime
    from headserve.export.repository import add_encoder

    options = production_options(args)  # a bad count is refused before the encoder loads
    spec = get_encoder(args.name)
    if args.encoder_weights:
        spec = spec.with_weights(args.encoder_weights)
    runtime = Runtime(args.runtime)
    if args.pooling == "region":  # one pass per image, boxes pooled: the region encoder, ONNX Runtime fp32
        from headserve.backbones import region_spec_for
        from headserve.export.region_ensemble import add_region_encoder

        loaded = load_encoder(spec)
        written = add_region_encoder(args.repo, loaded, region_spec_for(loaded, args.region_resolution), runtime,
                                     options, log=print)
        print(f"{written.name} version {written.version}: {written.path} "
              f"(max |ONNX - torch| {_fmt(written.max_abs_diff)})")
        return 0
    choice = choose_engine(args.engine, args.precision, gpu=options.kind_for(runtime) is InstanceKind.KIND_GPU)
    check_choice_usable(choice, options.cpu_threads)
    written = add_encoder(args.repo, load_encoder(spec), runtime, options=options, choice=choice, log=print)
    print(f"{written.name} version {written.version}: {written.path} (max |ONNX - torch| {_fmt(written.max_abs_diff)})")
    return 0


def _export_head(args: argparse.Namespace) -> int:
    from headserve.export.pipeline import export_head

    written = export_head(args.artifact, args.repo, args.runtime, encoder_name=args.encoder or None,
                          encoder_weights=args.encoder_weights, options=production_options(args),
                          precision=args.precision, engine=args.engine, log=print)
    report_written(written, args.server, args.repo)
    return 0


def _export_multi_head(args: argparse.Namespace) -> int:
    from headserve.export.multi_head import write_multi_head_ensemble

    report_written([write_multi_head_ensemble(args.repo, args.heads, args.runtime, args.name)], args.server,
                   args.repo)
    return 0


def _export_prompts(args: argparse.Namespace) -> int:
    from headserve.export.prompts import add_prompt_model, parse_prompt
    from headserve.export.repository import read_served_head

    served, _ = read_served_head(args.repo, args.head, "its prompts")
    classes = served.classes
    texts, indices = [], []
    for item in args.prompt:
        index, text = parse_prompt(item, classes)
        texts.append(text)
        indices.append(index)
    written = add_prompt_model(args.repo, args.head, texts, indices, args.runtime, args.encoder_weights,
                               production_options(args))
    report_written([written], None)
    return 0


def _export_example(args: argparse.Namespace) -> int:
    from headserve.export.example import write_example_repository

    report_written(write_example_repository(args.repo, args.runtime, production_options(args)), None)
    return 0


def _export_encoded(args: argparse.Namespace) -> int:
    from headserve.export.encoded_input import add_encoded_input

    report_written(add_encoded_input(args.repo, args.head, args.runtime, production_options(args)), args.server,
                   args.repo)
    return 0


def report_written(written: Sequence[Any], servers: list[str] | None, repo: Path | None = None) -> None:
    """Print what was written; with servers, roll it out to every replica and report each one. Without, a
    `headserve serve` running on ``repo`` is found by its state file and gets the new versions the same way
    (or, in a mode where it cannot, a warning that names the fix): a new version must not stay on disk only."""
    for w in written:
        print(f"{w.name} version {w.version}: {w.path}"
              + (f" (max |ONNX - torch| {_fmt(w.max_abs_diff)})" if w.max_abs_diff else ""))
    if not servers and repo is not None and written:
        servers = _running_serve(repo)
    if servers:
        from headserve.export.server_load import require_all_ready, rollout

        results = rollout(servers, [w.name for w in written], {w.name: w.version for w in written})
        for replica in results:
            for loaded in replica.loaded:
                print(f"ready on {replica.address}: {loaded.name} version {loaded.version} ({loaded.seconds:.1f}s)")
            print(f"replica {replica.address}: " + ("ok" if replica.ok else f"failed: {replica.error}"), flush=True)
        print(f"rollout: {sum(r.ok for r in results)} of {len(results)} replica(s) ready", flush=True)
        require_all_ready(results)


def _running_serve(repo: Path, doing: str = "loading the new versions there") -> list[str] | None:
    """The gRPC URL of the `headserve serve` running on ``repo`` when it can load new versions, after saying so."""
    from headserve.server import ServeState

    state = ServeState.read(repo)
    if state is None:
        return None
    who = f"`headserve serve` (pid {state.pid}, gRPC {state.grpc_url}) serves {repo}"
    if state.model_control == "explicit":
        print(f"{who}: {doing}", flush=True)
        return [state.grpc_url]
    if state.model_control == "poll":
        print(f"{who} in poll mode: it loads the new versions within {state.poll_secs}s", flush=True)
        return None
    print(f"warning: {who} in model control mode none, so it keeps answering with the old versions; restart it, or "
          "serve with --model-control-mode explicit (the default) so that export loads new versions there",
          file=sys.stderr, flush=True)
    return None


def _repo_validate(args: argparse.Namespace) -> int:
    from headserve.errors import RepositoryError
    from headserve.export.validation import describe, validate_repository

    problems = validate_repository(args.repository)
    if problems:
        raise RepositoryError(f"{args.repository}: {len(problems)} problem(s)\n{describe(problems)}")
    print(f"{args.repository}: valid")
    return 0


def _repo_list(args: argparse.Namespace) -> int:
    from headserve.app.inventory import print_table
    from headserve.contract import head_model_name
    from headserve.export.lifecycle import pinned_version
    from headserve.export.validation import list_models

    rows = list_models(args.repository)
    if not rows:
        print(f"{args.repository}: no models")
        return 0
    for row in rows:  # a head model, and the head ensemble over it, show the version `repo pin` chose
        head_dir = args.repository / (row["model"] if row["kind"] == "head" else head_model_name(row["model"]))
        pinned = pinned_version(head_dir) if row["kind"] in ("head", "ensemble") else None
        row["pinned"] = "" if pinned is None else str(pinned)
    print_table([{k: r[k] for k in ("model", "kind", "versions", "pinned", "runtime", "encoder", "classes")}
                 for r in rows])
    return 0


def _repo_remove(args: argparse.Namespace) -> int:
    from headserve.export.lifecycle import remove_head

    removed = remove_head(args.repo, args.head, args.with_multi_head, args.prune_encoder)
    print(f"removed from {args.repo}: {', '.join(removed.models)}")
    if removed.encoder in removed.models:
        print(f"removed encoder {removed.encoder}: no head runs on it any more")
    elif removed.encoder_users:
        print(f"kept encoder {removed.encoder}: {', '.join(removed.encoder_users)} run(s) on it")
    else:
        print(f"kept encoder {removed.encoder}, which no head runs on any more; --prune-encoder removes it")
    servers = args.server or _running_serve(args.repo, "unloading the removed models there")
    if servers:
        from headserve.export.server_load import expand_endpoint, unload_on_server

        for address in (a for e in servers for a in expand_endpoint(e)):
            unloaded = unload_on_server(address, removed.models)
            print(f"unloaded on {address}: {', '.join(unloaded)}")
    return 0


def _repo_pin(args: argparse.Namespace) -> int:
    from headserve.export.lifecycle import pin_head

    pinned = pin_head(args.repo, args.head, None if args.latest else args.version)
    classes = ", ".join(pinned.record.classes)
    print(f"{args.head}: " + (f"pinned to head version {pinned.version}" if pinned.pinned
                              else f"unpinned, on the newest head version {pinned.version}") + f" (classes {classes})")
    report_written(pinned.written, args.server, args.repo)
    return 0


def _fmt(diffs: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2g}" for k, v in diffs.items())
