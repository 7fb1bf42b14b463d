"""int8 quantisation of an exported GLiClass graph, and how often it changes the model's answers.

Plain dynamic quantisation (onnxruntime's `quantize_dynamic` with its defaults: one int8 scale per weight matrix,
the embedding tables too, both towers of a bi-encoder) changed 16-29% of the top-1 decisions of the shipped MiniLM
bi-encoder (experiments/results/speed.md). What `quantize_graph` does instead, each measured to matter (issue 23):

- **per-channel weights**: one scale per output column of every weight matrix, not one per matrix;
- **embedding tables stay fp32** (`Gather`, `EmbedLayerNormalization` are not quantised): they cost memory, not time;
- **activation x activation MatMuls stay fp32** (`MatMulConstBOnly`): in graphs without the fused attention op, the
  attention scores would otherwise be quantised per tensor;
- **SmoothQuant on the LayerNorm outputs** (Xiao et al., 2023): the activations int8 rounds per tensor hold a few
  channels far larger than the rest, set by the LayerNorm gains. For every quantised projection that reads a
  LayerNorm output (the attention's Q/K/V projection, the feed-forward's first layer), channel j of its input is
  divided by s_j = sqrt(max|x_j| / max|W_j|) (a `Mul` before the projection) and row j of its weight multiplied by
  it, so the fp32 function is unchanged and both sides quantise with a similar range. max|x_j| comes from a
  calibration pass over a few texts (the built-in `PROBE_TEXTS` unless the caller gives its own);
- **fp32 for outlier inputs SmoothQuant cannot reach**: a projection that does not read a LayerNorm output (the
  feed-forward's second layer reads GELU outputs) stays fp32 when its input's largest channel is `OUTLIER_RATIO`
  times its median one (on MiniLM: the first layer's feed-forward output projection only);
- `export_onnx` keeps a **bi-encoder's label tower in fp32**: label vectors are computed once per label and cached
  by the pipeline, so its speed barely matters, and an error in a label vector moves the decision of every text.

`agreement` measures what is left: the top-1 decisions of the int8 export against the fp32 export on probe texts.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# the settings `quantize_graph` hands to onnxruntime; tests check that they reach it
PER_CHANNEL = True
OP_TYPES = ("MatMul", "Attention")  # not Gather / EmbedLayerNormalization: the embedding tables stay fp32
SMOOTH_ALPHA = 0.5  # SmoothQuant's migration strength: 0 leaves activations alone, 1 moves all their range
NORM_OPS = frozenset(
    {
        "LayerNormalization",
        "SkipLayerNormalization",
        "EmbedLayerNormalization",
        "SimplifiedLayerNormalization",
        "SkipSimplifiedLayerNormalization",
    }
)
# an input that SmoothQuant cannot reach (not a LayerNorm output: the feed-forward's second layer reads GELU outputs)
# and whose largest channel is this many times its median one keeps its projection in fp32. Per-tensor uint8 leaves
# the median channel ~255 / ratio steps. On MiniLM only the first layer's feed-forward output projection (18.5; the
# next highest: 14.1) passes, and that one projection held the largest share of the int8 error.
OUTLIER_RATIO = 16.0
AGREEMENT_TARGET = 0.95
MAX_CALIBRATION_TEXTS = 512
BIG_MODEL_BYTES = int(1.8 * 2**30)  # protobuf's 2 GiB limit: larger graphs keep their weights in external data

# Written for this probe (not taken from any dataset): four domains, each with its own candidate labels. Every text
# is scored against every label set, so the probe holds clear decisions and near-ties alike.
PROBE_LABELS = {
    "topic": [
        "politics",
        "sports",
        "business",
        "science and technology",
        "health",
        "entertainment",
        "world news",
        "education",
    ],
    "sentiment": ["positive", "negative", "neutral"],
    "emotion": ["joy", "sadness", "anger", "fear", "surprise", "love"],
    "intent": [
        "book a flight",
        "check account balance",
        "weather forecast",
        "play music",
        "set an alarm",
        "restaurant reservation",
        "cancel an order",
        "technical support",
    ],
}
PROBE_TEXTS = (
    "The central bank raised interest rates by half a point to slow rising prices.",
    "The striker scored twice in the second half as the home side won the cup final.",
    "Researchers unveiled a battery chemistry that charges an electric car in ten minutes.",
    "Parliament passed the budget after a late-night vote split the ruling coalition.",
    "A new vaccine cut hospital admissions for the winter flu by nearly a third, the study found.",
    "The film festival opened with a premiere that drew crowds of fans to the red carpet.",
    "Shares of the chipmaker fell sharply after it warned that quarterly profits would miss forecasts.",
    "Schools across the region will add a mandatory coding class to the curriculum next year.",
    "Floods displaced thousands of families after the river burst its banks overnight.",
    "The tennis champion withdrew from the tournament with a wrist injury.",
    "The space agency's probe sent back the first close-up images of the asteroid.",
    "The merger of the two airlines will create the largest carrier on the continent.",
    "Absolutely loved this phone: the battery lasts two days and the camera is superb.",
    "The food arrived cold and the waiter ignored us for twenty minutes.",
    "A moving, beautifully acted film that stayed with me for days.",
    "Broke after a week of use, and customer support never answered my emails.",
    "The hotel was fine, nothing special, but the location was convenient.",
    "This is the most boring book I have ever forced myself to finish.",
    "Great value for the price, and delivery was faster than promised.",
    "The sequel is a lazy cash grab with none of the charm of the original.",
    "The staff went out of their way to make our anniversary dinner special.",
    "The app keeps crashing whenever I try to upload a photo.",
    "I can't stop smiling, I finally got the job I wanted!",
    "I miss my grandmother so much since she passed away last spring.",
    "How dare they cancel my flight without even telling me!",
    "I heard footsteps behind me in the dark alley and started to run.",
    "I never expected to see my old school friend on the other side of the world.",
    "Every morning with you feels like a gift.",
    "I'm so nervous about the exam tomorrow that I can't sleep.",
    "They lied to us again and I am furious.",
    "Tears came to my eyes when the puppy we lost was found safe.",
    "Can you find me a flight from Boston to Denver next Friday?",
    "How much money is left in my checking account?",
    "Will it rain in Seattle tomorrow afternoon?",
    "Play some relaxing jazz in the living room.",
    "Wake me up at six thirty tomorrow morning.",
    "Book a table for four at an Italian place tonight at eight.",
    "I want to cancel the shoes I ordered yesterday.",
    "My laptop won't connect to the wifi after the update.",
    "Is there a cheaper flight if I leave on Sunday instead?",
    "What is the tallest mountain in Africa?",
    "Who wrote the novel about a whale and a ship captain?",
    "The patient reported a persistent cough, mild fever and shortness of breath.",
    "Add two cups of flour and stir until the batter is smooth.",
    "The contract may be terminated by either party with thirty days' written notice.",
    "lol that meme is so true, my cat does exactly this every night",
    "Breaking: magnitude 6.1 earthquake reported off the coast, no tsunami warning issued.",
    "Install the package, then run the tests with the verbose flag to see each result.",
)


def read_calibration(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Calibration rows from a file: `.jsonl` rows `{"text", "labels"?}` (the candidate labels; a training row's
    `all_labels` is read first), or plain text, one text per line. A row without labels is scored against every probe
    label set. At most `MAX_CALIBRATION_TEXTS` rows are kept."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibration file {str(path)!r} does not exist")
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON object ({error.msg})") from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{path}:{number}: a calibration row needs a non-empty 'text' string")
            key = "all_labels" if "all_labels" in record else "labels"
            labels = record.get(key)
            if labels is not None and (
                not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels)
            ):
                raise ValueError(f"{path}:{number}: {key!r} must be a list of at least 2 candidate label strings")
            rows.append({"text": text, "labels": labels})
        else:
            rows.append({"text": line.strip(), "labels": None})
    if not rows:
        raise ValueError(f"calibration file {path} holds no texts")
    return rows[:MAX_CALIBRATION_TEXTS]


def probe_rows(rows: Sequence[dict[str, Any]] | None = None) -> list[tuple[str, list[str]]]:
    """(text, candidate labels) decisions: each row with its own labels, or against every probe label set."""
    rows = rows if rows is not None else [{"text": text, "labels": None} for text in PROBE_TEXTS]
    decisions = []
    for row in rows:
        label_sets = [row["labels"]] if row.get("labels") else list(PROBE_LABELS.values())
        decisions += [(row["text"], list(labels)) for labels in label_sets]
    return decisions


# ---------------------------------------------------------------------------------------------------- SmoothQuant


def projections(model: Any) -> list[Any]:
    """The nodes int8 quantises: `MatMul` / `Attention` with a constant 2-D weight as their second input."""
    weights = {init.name: init for init in model.graph.initializer}
    return [
        node
        for node in model.graph.node
        if node.op_type in OP_TYPES
        and len(node.input) > 1
        and node.input[1] in weights
        and len(weights[node.input[1]].dims) == 2
    ]


def smoothing_targets(model: Any) -> list[Any]:
    """The projections whose input is a LayerNorm's (first) output."""
    producers = {node.output[0]: node for node in model.graph.node if node.output}
    return [
        node
        for node in projections(model)
        if node.input[0] in producers and producers[node.input[0]].op_type in NORM_OPS
    ]


def channel_maxima(model: Any, names: Sequence[str], feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """max |x| per channel (last axis) of the tensors `names` over the calibration `feeds`."""
    import onnx
    import onnxruntime as ort

    from gliclass.onnx.runtime import session_options

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {output.name for output in probe.graph.output}
    for name in names:
        if name not in present:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    maxima: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        save(probe, path)
        session = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
        outputs = [output.name for output in session.get_outputs()]
        inputs = {i.name for i in session.get_inputs()}
        for feed in feeds:
            values = dict(zip(outputs, session.run(None, {k: v for k, v in feed.items() if k in inputs}), strict=True))
            for name in names:
                value = np.abs(values[name]).reshape(-1, values[name].shape[-1]).max(0)
                maxima[name] = value if name not in maxima else np.maximum(maxima[name], value)
    if not maxima:
        raise ValueError("int8 calibration got no texts")
    return maxima


def outlier_ratio(maxima: np.ndarray) -> float:
    """How far the largest input channel reaches beyond the typical one (max over median of the channel maxima)."""
    return float(maxima.max() / max(float(np.median(maxima)), 1e-12))


def smooth(model: Any, targets: Sequence[Any], maxima: dict[str, np.ndarray], alpha: float = SMOOTH_ALPHA) -> int:
    """SmoothQuant the projections `targets` of `model` in place, from their inputs' channel `maxima` (see the
    module docstring); returns how many were smoothed."""
    from onnx import helper, numpy_helper

    if not 0.0 < alpha < 1.0:
        raise ValueError(f"smooth_alpha must be in (0, 1), got {alpha}")
    weights = {init.name: init for init in model.graph.initializer}
    inserted, originals = [], set()
    for k, node in enumerate(targets):
        weight = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        act = np.maximum(maxima[node.input[0]], 1e-5)
        if act.shape[0] != weight.shape[0]:
            continue  # not a [.., K] x [K, N] projection after all
        scale = act**alpha / np.maximum(np.abs(weight).max(1), 1e-5) ** (1.0 - alpha)
        scale = np.clip(scale, 1e-2, 1e2).astype(np.float32)
        # a weight shared by two projections would be scaled twice: give each its own copy
        name = f"{node.input[1]}_smoothed_{k}"
        model.graph.initializer.append(numpy_helper.from_array(weight * scale[:, None], name))
        inverse = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{node.name or k}_smooth_inverse_{k}")
        model.graph.initializer.append(inverse)
        smoothed = f"{node.input[0]}_smoothed_{k}"
        inserted.append((node, helper.make_node("Mul", [node.input[0], inverse.name], [smoothed], name=smoothed)))
        originals.add(node.input[1])
        node.input[0], node.input[1] = smoothed, name
    nodes = list(model.graph.node)
    for node, mul in inserted:  # each Mul right before its projection keeps the graph topologically sorted
        nodes.insert(nodes.index(node), mul)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in model.graph.node for name in node.input}
    replaced = originals - used  # the unscaled weights nothing reads any more
    kept = [init for init in model.graph.initializer if init.name not in replaced]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return len(inserted)


def calibrate(
    model: Any, feeds: Iterable[dict[str, np.ndarray]], alpha: float | None = SMOOTH_ALPHA
) -> tuple[int, list[str]]:
    """One calibration pass over every projection's input, then: SmoothQuant on those that read a LayerNorm
    (`alpha` None: none), and the names of the others whose input still holds channel outliers (`outlier_ratio` >=
    OUTLIER_RATIO), to be left in fp32. Returns (projections smoothed, names to keep in fp32)."""
    nodes = projections(model)
    if not nodes:
        return 0, []
    maxima = channel_maxima(model, sorted({node.input[0] for node in nodes}), feeds)
    targets = smoothing_targets(model) if alpha is not None else []
    chosen = {id(node) for node in targets}
    keep = [
        node.name
        for node in nodes
        if id(node) not in chosen and node.name and outlier_ratio(maxima[node.input[0]]) >= OUTLIER_RATIO
    ]
    return (smooth(model, targets, maxima, alpha) if targets else 0), keep


def save(model: Any, path: Path) -> None:
    import onnx

    if model.ByteSize() > BIG_MODEL_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save_model(model, str(path))


# ---------------------------------------------------------------------------------------------------- quantisation


def quantize_graph(
    path: Path,
    calibration: Iterable[dict[str, np.ndarray]] | None = None,
    per_channel: bool = PER_CHANNEL,
    smooth_alpha: float | None = SMOOTH_ALPHA,
    nodes_to_exclude: Sequence[str] = (),
    op_types: Sequence[str] = OP_TYPES,
) -> tuple[str, dict[str, Any]]:
    """Dynamic int8 quantisation of one graph (see the module docstring); returns the new file's name (beside
    `path`, `<stem>.int8.onnx`) and the settings used. `calibration`: input feeds of the graph, for SmoothQuant
    (`smooth_alpha=None`: none) and to find the outlier inputs left in fp32; None: neither. `nodes_to_exclude`: node
    names left in fp32 as well."""
    if smooth_alpha is not None and not 0.0 < smooth_alpha < 1.0:
        raise ValueError(f"smooth_alpha must be in (0, 1) or None, got {smooth_alpha}")
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path = Path(path)
    target = path.with_name(path.stem + ".int8.onnx")
    settings: dict[str, Any] = {
        "per_channel": per_channel,
        "op_types": list(op_types),
        "nodes_excluded": list(nodes_to_exclude),
        "smoothed": 0,
    }
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / path.name
        try:  # shape inference + graph clean-up lets more MatMuls be quantised
            with contextlib.redirect_stdout(io.StringIO()):
                quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
            source = prepared
        except Exception:  # noqa: BLE001 -- pre-processing is an optimisation; quantise the raw graph instead
            source = path
        if calibration is not None:
            model = onnx.load(str(source))
            settings["smoothed"], outliers = calibrate(model, calibration, smooth_alpha)
            settings["smooth_alpha"] = smooth_alpha
            settings["nodes_excluded"] += [name for name in outliers if name not in settings["nodes_excluded"]]
            source = Path(tmp) / ("calibrated_" + path.name)
            save(model, source)
            del model
        # contrib ops (the fusions) have no type in ONNX shape inference: their float outputs are float32
        options = {"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True}
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            op_types_to_quantize=list(op_types),
            nodes_to_exclude=settings["nodes_excluded"],
            extra_options=options,
            use_external_data_format=source.stat().st_size > BIG_MODEL_BYTES,
        )
    return target.name, settings


def calibration_feeds(
    model: Any, processor: Any, decisions: Sequence[tuple[str, list[str]]], input_names: Sequence[str]
) -> Iterator[dict[str, np.ndarray]]:
    """The text graph's inputs for each distinct calibration text, one row at a time (no padding in the maxima),
    the label sets taking turns; a label set over the length budget is halved until it fits (the pipeline would
    group it). A bi-encoder's label vectors come from the torch model, as at inference."""
    import torch

    from gliclass.processing import LabelBudgetError

    options: dict[str, list[list[str]]] = {}
    for text, labels in decisions:
        options.setdefault(text, []).append(labels)
    for k, (text, label_sets) in enumerate(options.items()):
        labels = list(label_sets[k % len(label_sets)])
        while True:
            try:
                batch = model_inputs(model, processor, [text], [labels])
                break
            except LabelBudgetError:
                if len(labels) == 1:
                    batch = None
                    break
                labels = labels[: len(labels) // 2]
        if batch is None:
            continue
        yield {
            name: value.numpy().astype(np.float32 if value.is_floating_point() else np.int64)
            for name, value in batch.items()
            if name in input_names and isinstance(value, torch.Tensor)
        }


def model_inputs(model: Any, processor: Any, texts: list[str], labels: list[list[str]]) -> dict[str, Any]:
    """The processor's batch, `labels_mask` as int64, and for label-tower models the label vectors
    (`class_embeddings`), as the exported text graph takes them."""
    import torch

    batch = processor(texts, labels)
    batch["labels_mask"] = batch["labels_mask"].long()
    if model.config.uses_label_encoder:
        with torch.inference_mode():
            rows, cols = batch["labels_mask"].bool().nonzero(as_tuple=True)
            flat = model.encode_labels(batch["class_input_ids"][rows, cols], batch["class_attention_mask"][rows, cols])
        vectors = flat.new_zeros(*batch["labels_mask"].shape, flat.shape[-1])
        vectors[rows, cols] = flat
        batch["class_embeddings"] = vectors.clone()
    return batch


# ------------------------------------------------------------------------------------------------------ agreement


def agreement(out_dir: str | os.PathLike, decisions: Sequence[tuple[str, list[str]]]) -> dict[str, Any]:
    """Top-1 agreement and the largest |probability| difference between the int8 and the fp32 export in `out_dir`
    over `decisions` (single-label softmax over each text's candidates)."""
    from gliclass.pipeline import ZeroShotPipeline

    pipes = [ZeroShotPipeline.from_pretrained(out_dir, backend="onnx", quantized=q, batch_size=8) for q in (0, 1)]
    same, worst = 0, 0.0
    groups: dict[tuple[str, ...], list[str]] = {}
    for text, labels in decisions:
        groups.setdefault(tuple(labels), []).append(text)
    for labels, texts in groups.items():
        fp32, int8 = (pipe.scores(texts, list(labels), multi_label=False) for pipe in pipes)
        for a, b in zip(fp32, int8, strict=True):
            same += max(a, key=a.get) == max(b, key=b.get)
            worst = max(worst, max(abs(a[label] - b[label]) for label in a))
    total = len(decisions)
    return {
        "top1_agreement": same / total,
        "max_abs_prob_diff": worst,
        "decisions": total,
        "target": AGREEMENT_TARGET,
        "meets_target": same / total >= AGREEMENT_TARGET,
    }


def describe(report: dict[str, Any]) -> str:
    """One line for the CLI: what int8 changes, measured."""
    line = (
        f"int8: top-1 agreement with the fp32 export {report['top1_agreement']:.1%} on {report['decisions']} "
        f"{report.get('source', 'probe')} decisions (max |prob diff| {report['max_abs_prob_diff']:.3f})"
    )
    if not report["meets_target"]:
        line += (
            f"; below the {report['target']:.0%} target: the int8 model answers differently from fp32 on your data "
            "too, measure it there (python -m gliclass.onnx.evaluate) or use the fp32 export"
        )
    return line
