"""`headserve repo validate`: check a model repository before a Triton loads it.

Triton's protobuf schema catches syntax; it cannot see that an ONNX file's tensors are named or
shaped differently from its ``config.pbtxt`` (the python backend never looks), that an ensemble maps
a tensor nobody produces, that a labels file has one line too few, or that a head was trained on
another encoder than the one its ensemble feeds it. Each of those is a ``Problem`` naming the file
and the fix; an empty list means the repository is consistent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from headserve.contract import (
    MATCH_KEYS,
    PIXELS,
    REGION_KEY,
    REGION_PIXELS,
    EncoderIdentity,
    MalformedParameterError,
    ServedHead,
)
from headserve.errors import RepositoryError
from headserve.export.fingerprint_file import FINGERPRINT_FILE, FingerprintFileError, read_fingerprint
from headserve.export.model_config import parameters_of

CONFIG_FILE = "config.pbtxt"
# ONNX TensorProto element types -> Triton data types (the subset headserve exports).
ONNX_TO_TRITON: dict[int, int] = {1: mc.TYPE_FP32, 2: mc.TYPE_UINT8, 7: mc.TYPE_INT64, 8: mc.TYPE_STRING,
                                  10: mc.TYPE_FP16, 6: mc.TYPE_INT32, 9: mc.TYPE_BOOL}
# Ensemble parameters that must agree with the encoder model's own parameters (re-exported from headserve.contract).
ENCODER_KEYS: tuple[str, ...] = MATCH_KEYS


@dataclass(frozen=True)
class Problem:
    """One inconsistency: where it is, what is wrong, and what to do about it."""

    path: Path  # the file (or directory) at fault
    message: str  # what is wrong, naming the values involved
    fix: str  # what the user should do

    def __str__(self) -> str:
        return f"{self.path}: {self.message} Fix: {self.fix}"


@dataclass
class ModelEntry:
    """A parsed model directory of the repository."""

    name: str  # directory name (= model name)
    directory: Path  # the model's directory
    config: mc.ModelConfig  # parsed config.pbtxt
    versions: list[int] = field(default_factory=list)  # version directories Triton would load

    @property
    def is_ensemble(self) -> bool:
        return self.config.platform == "ensemble"

    @property
    def parameters(self) -> dict[str, str]:
        return parameters_of(self.config)

    def tensor(self, name: str, inputs: bool) -> mc.ModelInput | mc.ModelOutput | None:
        return next((t for t in (self.config.input if inputs else self.config.output) if t.name == name), None)


def _type_name(dtype: int) -> str:
    return mc.DataType.Name(dtype)


def load_models(repo: Path, problems: list[Problem], broken: set[str] | None = None) -> dict[str, ModelEntry]:
    """Parse every ``<model>/config.pbtxt`` with Triton's schema; parse errors become problems.

    Names of model directories whose config did not parse are added to ``broken``.
    """
    models: dict[str, ModelEntry] = {}
    broken = set() if broken is None else broken
    for directory in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        path = directory / CONFIG_FILE
        if not path.is_file():
            problems.append(Problem(directory, "model directory has no config.pbtxt.",
                                    "export the model again, or remove the directory from the repository."))
            continue
        try:
            config = text_format.Parse(path.read_text(), mc.ModelConfig())
        except (text_format.ParseError, UnicodeDecodeError) as exc:  # a binary or non-UTF-8 file, too
            problems.append(Problem(path, f"not a valid Triton ModelConfig ({exc}).",
                                    "correct the field named at that line:column, or re-export the model."))
            broken.add(directory.name)
            continue
        if config.name and config.name != directory.name:
            problems.append(Problem(path, f"name {config.name!r} differs from its directory {directory.name!r}.",
                                    f"set name: \"{directory.name}\" or rename the directory."))
        entry = ModelEntry(directory.name, directory, config, _loaded_versions(directory, config))
        if not entry.versions:
            problems.append(Problem(directory, "no numeric version directory (e.g. 1/) to load.",
                                    "export the model, which writes the next version directory."))
        models[entry.name] = entry
    return models


def _loaded_versions(directory: Path, config: mc.ModelConfig) -> list[int]:
    versions = sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return versions
    if which == "specific":
        return [v for v in versions if v in set(policy.specific.versions)]
    keep = policy.latest.num_versions if which == "latest" else 1
    return versions[-keep:]


def validate_repository(repo: str | Path) -> list[Problem]:
    """Every problem found in ``repo``; an empty list means Triton will find it consistent."""
    repo = Path(repo)
    problems: list[Problem] = []
    if not repo.is_dir():
        return [Problem(repo, "is not a directory.", "pass the model repository directory (with one folder per model).")]
    broken: set[str] = set()
    models = load_models(repo, problems, broken)
    for entry in models.values():
        _check_labels(entry, problems)
        if entry.is_ensemble:
            _check_ensemble(entry, models, broken, problems)
            _check_served_head(entry, models, problems)
        elif _is_python_model(entry):
            for version in entry.versions:
                if not (entry.directory / str(version) / "model.py").is_file():
                    problems.append(Problem(entry.directory / str(version) / "model.py",
                                            "python-backend model without its model.py.", "re-export the model."))
        else:
            for version in entry.versions:
                _check_onnx(entry, entry.directory / str(version), problems)
            _check_fingerprint_file(entry, problems)
    return problems


def _is_python_model(entry: ModelEntry) -> bool:
    """A python-backend model with its own code (the image decoder), not an ONNX graph run by the runner."""
    return entry.config.backend == "python" and "onnx_file" not in entry.parameters


# ---------------------------------------------------------------------------------------------
# Labels


def _check_labels(entry: ModelEntry, problems: list[Problem]) -> None:
    for out in entry.config.output:
        if not out.label_filename:
            continue
        path = entry.directory / out.label_filename
        if not path.is_file():
            problems.append(Problem(path, f"output {out.name!r} names labels file {out.label_filename!r}, "
                                          "which does not exist.",
                                    "re-export the head (it writes one class name per line)."))
            continue
        labels = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        classes = out.dims[-1] if out.dims else 0
        if classes > 0 and len(labels) != classes:
            problems.append(Problem(path, f"{len(labels)} labels for output {out.name!r} of {classes} classes "
                                          f"(dims {list(out.dims)}).",
                                    f"write exactly {classes} class names, one per line, in output order."))


# ---------------------------------------------------------------------------------------------
# ONNX graphs against their configs


def _onnx_file(entry: ModelEntry, version_dir: Path) -> Path:
    params = entry.parameters
    name = params.get("onnx_file") or entry.config.default_model_filename or "model.onnx"
    return version_dir / name


def _check_onnx(entry: ModelEntry, version_dir: Path, problems: list[Problem]) -> None:
    import onnx
    from onnx.external_data_helper import uses_external_data

    path = _onnx_file(entry, version_dir)
    if "onnx_file" in entry.parameters and not (version_dir / "model.py").is_file():
        problems.append(Problem(version_dir / "model.py", "a local-runtime model without the runner that serves "
                                                          "its ONNX file (python backend).",
                                "re-export with `runtime` local, or use `runtime` production for the onnxruntime "
                                "backend."))
    if not path.is_file():
        problems.append(Problem(path, "the ONNX file the config points at is missing.",
                                "re-export the model; a version directory must carry its model file."))
        return
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError/ValueError alike for a corrupt file
        problems.append(Problem(path, f"not a readable ONNX model ({exc.__class__.__name__}).", "re-export the model."))
        return
    missing: dict[str, list[str]] = {}  # external data file -> initializers stored in it
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if not (path.parent / location).is_file():
                missing.setdefault(location, []).append(tensor.name)
    for location, names in missing.items():
        problems.append(Problem(path.parent / location, f"external data of {len(names)} initializer(s) of "
                                                        f"{path.name} (e.g. {names[0]!r}) is missing.",
                                "copy the weights file that was exported next to the ONNX file, or re-export."))
    batched = entry.config.max_batch_size > 0
    graph_inputs = {v.name: v for v in model.graph.input}
    graph_outputs = {v.name: v for v in model.graph.output}
    for inputs, declared, actual in ((True, entry.config.input, graph_inputs), (False, entry.config.output, graph_outputs)):
        kind = "input" if inputs else "output"
        for tensor in declared:
            value = actual.get(tensor.name)
            if value is None:
                problems.append(Problem(entry.directory / CONFIG_FILE,
                                        f"{kind} {tensor.name!r} is not in {path.relative_to(entry.directory)} "
                                        f"(its {kind}s are {sorted(actual)}).",
                                        f"rename the config's {kind} to one of the graph's names, or re-export."))
                continue
            _compare_tensor(entry, path, kind, tensor, value, batched, problems)


def _compare_tensor(entry: ModelEntry, path: Path, kind: str, tensor, value, batched: bool,
                    problems: list[Problem]) -> None:
    config_path = entry.directory / CONFIG_FILE
    ttype = value.type.tensor_type
    onnx_type = ONNX_TO_TRITON.get(ttype.elem_type)
    if onnx_type is not None and onnx_type != tensor.data_type:
        problems.append(Problem(config_path, f"{kind} {tensor.name!r} is {_type_name(tensor.data_type)} in the config "
                                             f"but {_type_name(onnx_type)} in {path.name}.",
                                f"set data_type: {_type_name(onnx_type)} (or re-export the graph)."))
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim]
    if batched:
        dims = dims[1:]
    declared = list(tensor.dims)
    mismatch = len(dims) != len(declared) or any(a != b and a != -1 and b != -1 for a, b in zip(dims, declared))
    if mismatch:
        problems.append(Problem(config_path, f"{kind} {tensor.name!r} has dims {declared} in the config but "
                                             f"{dims} in {path.name} (batch dimension excluded).",
                                f"set dims: {dims} in the config, or re-export the graph."))


def _check_fingerprint_file(entry: ModelEntry, problems: list[Problem]) -> None:
    declared = entry.parameters.get("encoder_fingerprint")
    if not declared or not entry.versions:
        return
    path = entry.directory / str(entry.versions[-1]) / FINGERPRINT_FILE
    try:
        recorded = read_fingerprint(path)
    except FingerprintFileError as exc:
        problems.append(Problem(path, str(exc).removeprefix(f"{path}: ").split("; ")[0] + ".",
                                "export the encoder again so the weights are vouched for."))
        return
    if recorded is not None and recorded.get("fingerprint") != declared:
        problems.append(Problem(path, f"fingerprint {recorded.get('fingerprint')} of the exported weights differs "
                                      f"from the config's encoder_fingerprint {declared}.",
                                "export the encoder again so config and weights come from one export."))


# ---------------------------------------------------------------------------------------------
# Ensembles


def _check_ensemble(entry: ModelEntry, models: dict[str, ModelEntry], broken: set[str],
                    problems: list[Problem]) -> None:
    config_path = entry.directory / CONFIG_FILE
    # Every tensor available inside the ensemble: name -> (dtype, full dims, who provides it). Dims are compared
    # whole, the batch dimension (-1) included for batching models, as Triton does: a non-batching producer's
    # [-1, D] (a region encoder's K boxes) feeds a batching consumer's [D] (a head, K rows as its batch).
    available: dict[str, tuple[int, list[int], str]] = {
        t.name: (t.data_type, _full_dims(entry, t), "the ensemble input") for t in entry.config.input
    }
    steps = list(entry.config.ensemble_scheduling.step)
    if not steps:
        problems.append(Problem(config_path, "platform is ensemble but ensemble_scheduling has no step.",
                                "re-export the head, which writes encoder and head steps."))
        return
    if any(step.model_name in broken for step in steps):
        return  # its step's config is already reported; wiring cannot be checked against it
    for step in steps:
        model = models.get(step.model_name)
        if model is None:
            problems.append(Problem(config_path, f"step model {step.model_name!r} is not in the repository "
                                                 f"(models: {sorted(models)}).",
                                    "export that model into this repository, or correct model_name."))
            continue
        if step.model_version > 0 and step.model_version not in model.versions:
            problems.append(Problem(config_path, f"step model {step.model_name!r} is pinned to version "
                                                 f"{step.model_version}, which Triton will not load (loaded: "
                                                 f"{model.versions or 'none'}).",
                                    "export the head again, which writes an ensemble pinned to its new version."))
        for key, value in step.output_map.items():
            out = model.tensor(key, inputs=False)
            if out is None:
                problems.append(Problem(config_path, f"step {step.model_name!r} output_map reads {key!r}, which "
                                                     f"{step.model_name} does not output "
                                                     f"({[t.name for t in model.config.output]}).",
                                        "map one of the model's outputs, or re-export the ensemble."))
                continue
            available[value] = (out.data_type, _full_dims(model, out), f"{step.model_name}.{key}")
    for step in steps:
        model = models.get(step.model_name)
        if model is None:
            continue
        for key, value in step.input_map.items():
            inp = model.tensor(key, inputs=True)
            if inp is None:
                problems.append(Problem(config_path, f"step {step.model_name!r} input_map feeds {key!r}, which is not "
                                                     f"an input of {step.model_name} "
                                                     f"({[t.name for t in model.config.input]}).",
                                        "map the model's input name, or re-export the ensemble."))
                continue
            source = available.get(value)
            if source is None:
                problems.append(Problem(config_path, f"step {step.model_name!r} input {key!r} is mapped from "
                                                     f"ensemble tensor {value!r}, which no step outputs and is not "
                                                     f"an ensemble input (available: {sorted(available)}).",
                                        "map it from an earlier step's output_map value or an ensemble input."))
                continue
            _compare_wire(config_path, f"{step.model_name}.{key}", (inp.data_type, _full_dims(model, inp)), value,
                          source, problems)
    for out in entry.config.output:
        source = available.get(out.name)
        if source is None:
            problems.append(Problem(config_path, f"ensemble output {out.name!r} is produced by no step "
                                                 f"(step outputs: {sorted(available)}).",
                                    "add it to a step's output_map, or remove the output."))
            continue
        _compare_wire(config_path, f"ensemble output {out.name}", (out.data_type, _full_dims(entry, out)), out.name,
                      source, problems)
    _check_encoder_agreement(entry, steps, models, problems)


def _full_dims(model: ModelEntry, tensor) -> list[int]:
    """A tensor's dims with the batch dimension (-1) in front when its model batches."""
    return ([-1] if model.config.max_batch_size > 0 else []) + list(tensor.dims)


def _compare_wire(config_path: Path, consumer: str, wanted: tuple[int, list[int]], tensor: str,
                  source: tuple[int, list[int], str], problems: list[Problem]) -> None:
    dtype, dims, producer = source
    same_shape = len(dims) == len(wanted[1]) and all(a == b or -1 in (a, b) for a, b in zip(dims, wanted[1]))
    if dtype != wanted[0] or not same_shape:
        problems.append(Problem(config_path, f"{consumer} expects {_type_name(wanted[0])} {wanted[1]} but tensor "
                                             f"{tensor!r} from {producer} is {_type_name(dtype)} {dims}.",
                                "connect tensors of the same type and shape, or re-export the head on this "
                                "encoder."))


def _check_encoder_agreement(entry: ModelEntry, steps, models: dict[str, ModelEntry],
                             problems: list[Problem]) -> None:
    """The ensemble's head was trained on the encoder its first step runs: type, model, dim, fingerprint.

    Both sides are read as ``EncoderIdentity`` records; a field either side leaves out is not compared.
    """
    if not any(key in entry.parameters for key in MATCH_KEYS):
        return  # an ensemble that publishes no encoder (written by hand): nothing to agree with
    ours = _identity(entry, problems)
    if ours is None:
        return
    for step in steps:
        model = models.get(step.model_name)
        if model is None or "encoder_type" not in model.parameters:
            continue
        theirs = _identity(model, problems)
        if theirs is None:
            continue
        for key, our_value, their_value in ours.differences(theirs):
            problems.append(Problem(entry.directory / CONFIG_FILE,
                                    f"head {entry.name!r} was trained on {key} {our_value!r} but its encoder step "
                                    f"{step.model_name!r} has {key} {their_value!r}.",
                                    f"retrain the head on {theirs.name or step.model_name}'s "
                                    "embeddings, or export the encoder it was trained on into this repository."))


def _identity(entry: ModelEntry, problems: list[Problem]) -> EncoderIdentity | None:
    """The encoder identity a model publishes; a malformed one is a problem (reported once per model)."""
    try:
        return EncoderIdentity.from_parameters(entry.parameters, str(entry.directory / CONFIG_FILE),
                                               read_preprocess=False)
    except MalformedParameterError as exc:
        problem = Problem(entry.directory / CONFIG_FILE, f"{exc}.", f"correct or remove parameter {exc.key!r}.")
        if problem not in problems:
            problems.append(problem)
        return None


def _check_served_head(entry: ModelEntry, models: dict[str, ModelEntry], problems: list[Problem]) -> None:
    """A head ensemble's record reads back (``ServedHead.from_parameters``) and names its labels file's classes."""
    params = entry.parameters
    if "classes" not in params or "preprocess" not in params:
        return  # not a head ensemble (a multi-head one, or written by hand without a record)
    config_path = entry.directory / CONFIG_FILE
    try:
        served = ServedHead.from_parameters(entry.name, params, where=str(config_path))
    except MalformedParameterError as exc:
        problems.append(Problem(config_path, f"{exc}.", f"re-export the head, or correct parameter {exc.key!r}."))
        return
    if served.encoder.region is not None:
        _check_region_head(entry, served.encoder.region.resolution, models, problems)
    size = served.preprocess.input_size
    pixels = entry.tensor(PIXELS, inputs=True)
    if not served.encoded_input and pixels is not None and list(pixels.dims) != [size, size, 3]:
        problems.append(Problem(config_path, f"input {PIXELS!r} has dims {list(pixels.dims)}, but the preprocess "
                                             f"parameter resizes crops to {size}x{size}.",
                                "re-export the head, which writes its input and its preprocessing from one record."))
    probs = next((o for o in entry.config.output if o.label_filename), None)
    path = entry.directory / probs.label_filename if probs is not None else None
    if path is None or not path.is_file():
        return  # reported by the labels check
    labels = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if len(labels) == len(served.classes) and tuple(labels) != served.classes:
        problems.append(Problem(path, f"labels {labels} differ from the classes {list(served.classes)} that the "
                                      "ensemble publishes.",
                                "re-export the head, which writes labels and classes from one record."))


def _check_region_head(entry: ModelEntry, resolution: int, models: dict[str, ModelEntry],
                       problems: list[Problem]) -> None:
    """A region ensemble takes the frame its record's resolution letterboxes to, and publishes a cap on boxes
    that its head step accepts (a larger cap would let clients send boxes that Triton refuses)."""
    from headserve.contract import MAX_BOXES_KEY, max_boxes_of

    config_path = entry.directory / CONFIG_FILE
    frame = entry.tensor(REGION_PIXELS, inputs=True)
    if frame is None or list(frame.dims) != [1, resolution, resolution, 3] or entry.config.max_batch_size != 0:
        problems.append(Problem(config_path, f"a region head's ensemble takes {REGION_PIXELS!r} [1, {resolution}, "
                                             f"{resolution}, 3] without batching (max_batch_size 0), as its "
                                             f"{REGION_KEY} parameter says; it declares "
                                             f"{list(frame.dims) if frame is not None else 'no such input'} with "
                                             f"max_batch_size {entry.config.max_batch_size}.",
                                "re-export the head, which writes its inputs and its region spec from one record."))
    try:
        cap = max_boxes_of(entry.parameters, str(config_path))
    except MalformedParameterError as exc:
        problems.append(Problem(config_path, f"{exc}.", f"re-export the head, or correct parameter {exc.key!r}."))
        return
    steps = entry.config.ensemble_scheduling.step
    head = models.get(steps[-1].model_name) if steps else None
    if head is not None and 0 < head.config.max_batch_size < cap:
        problems.append(Problem(config_path, f"{MAX_BOXES_KEY} {cap} exceeds the max_batch_size "
                                             f"{head.config.max_batch_size} of its head step {head.name!r}, which "
                                             "Triton enforces on the boxes of one image.",
                                f"set {MAX_BOXES_KEY} to at most {head.config.max_batch_size}, or re-export the "
                                "head."))


def describe(problems: list[Problem]) -> str:
    return "\n".join(f"- {p}" for p in problems)


def list_models(repo: str | Path) -> list[dict[str, str]]:
    """One row per model: name, kind, versions, runtime and (for ensembles) encoder and classes."""
    repo = Path(repo)
    if not repo.is_dir():
        raise RepositoryError(f"model repository {repo} is not a directory; pass the model repository directory "
                              "(with one folder per model)")
    problems: list[Problem] = []
    rows = []
    for entry in load_models(repo, problems).values():
        params = entry.parameters
        region = " (regions)" if REGION_KEY in params else ""  # one image and its boxes in
        if entry.is_ensemble:
            kind, runtime = "ensemble" + region, "ensemble"
        else:
            kind = ("decoder" if _is_python_model(entry) else "encoder" + region if "encoder_fingerprint" in params
                    else "prompts" if "prompts" in params else "head")
            runtime = entry.config.platform or entry.config.backend
        classes = json.loads(params["classes"]) if "classes" in params else []
        rows.append({
            "model": entry.name,
            "kind": kind,
            "versions": ",".join(str(v) for v in sorted(
                int(p.name) for p in entry.directory.iterdir() if p.is_dir() and p.name.isdigit())),
            "runtime": runtime,
            "encoder": params.get("encoder_name", ""),
            "classes": ",".join(classes),
        })
    return rows
