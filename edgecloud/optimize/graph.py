"""Reading and rewriting ONNX graphs for ONNX Runtime's quantizer.

Models converted from scikit-learn by skl2onnx often keep their weights in the
attributes of ``ai.onnx.ml`` operators, which the quantizer never looks at. A
``LinearClassifier`` that reads a float ``[N, F]`` tensor (logistic
regression, linear SVM) is therefore rewritten as the equivalent ``MatMul +
Add`` (+ ``Softmax`` or ``Sigmoid``, and ``ArgMax + Gather`` when its label
output is used). Other ``ai.onnx.ml`` operators (``SVMClassifier``, tree
ensembles, ...) are left alone. After quantization, :func:`quantized_weights`
counts the weights ONNX Runtime stored as integers, and
:func:`nothing_to_quantize` says why there are none.

Everything here needs the ``onnx`` package, imported where it is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

STATIC_OP_TYPES: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul")
"""Node types whose inputs and weights static quantization touches."""

# Input positions that hold zero points (not weights) in quantized graphs.
_ZERO_POINT_INPUTS: dict[str, frozenset[int]] = {
    "QuantizeLinear": frozenset({2}),
    "DequantizeLinear": frozenset({2}),
    "MatMulInteger": frozenset({2, 3}),
    "ConvInteger": frozenset({2, 3}),
    "QLinearMatMul": frozenset({2, 5, 7}),
    "QLinearConv": frozenset({2, 5, 7}),
}

_ML_DOMAIN = "ai.onnx.ml"
_DEFAULT_OPSET = 13  # for graphs that import no default-domain opset: Softmax over one axis
_POST_TRANSFORMS = {"NONE": None, "SOFTMAX": "Softmax", "LOGISTIC": "Sigmoid"}


def rewrite_linear_classifiers(model: onnx.ModelProto) -> list[str]:
    """Replace each rewritable ``LinearClassifier`` by standard ops, in place; returns notes."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    if not any(_is_linear_classifier(node) for node in graph.node):
        return []
    opsets = {entry.domain: entry.version for entry in model.opset_import}
    default_opset = opsets.get("", opsets.get("ai.onnx", 0))
    if 0 < default_opset < 7:
        return ["left LinearClassifier as is: the model's opset is older than 7"]
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return ["left LinearClassifier as is: ONNX shape inference failed on this model"]
    infos = {
        info.name: info
        for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)
    }
    used = {name for node in graph.node for name in node.input}
    used.update(output.name for output in graph.output)
    taken = {name for node in graph.node for name in (*node.input, *node.output, node.name)}
    taken.update(init.name for init in graph.initializer)
    taken.update(item.name for item in graph.input)

    def fresh(base: str) -> str:
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    notes: list[str] = []
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if not _is_linear_classifier(node):
            nodes.append(node)
            continue
        label = node.name or "LinearClassifier"
        where = "LinearClassifier" if label == "LinearClassifier" else f"LinearClassifier '{label}'"
        features = _float_features(infos.get(node.input[0]))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        labels = list(attrs.get("classlabels_ints", [])) or [
            s.decode() for s in attrs.get("classlabels_strings", [])
        ]
        classes = len(labels)
        coefficients = np.asarray(attrs.get("coefficients", []), dtype=np.float32)
        intercepts = np.asarray(attrs.get("intercepts", np.zeros(classes)), dtype=np.float32)
        post = attrs.get("post_transform", b"NONE").decode()
        why_not = None
        if features is None:
            why_not = "its input is not a float [N, F] tensor of known width"
        elif classes < 2 or coefficients.size != classes * features or intercepts.size != classes:
            why_not = "its weights are not one row per class"
        elif post not in _POST_TRANSFORMS:
            why_not = f"post_transform {post} has no standard-op equivalent here"
        if why_not is not None:
            notes.append(f"left {where} as is: {why_not}")
            nodes.append(node)
            continue
        assert features is not None

        label_out = node.output[0] if node.output and node.output[0] in used else ""
        scores_out = node.output[1] if len(node.output) > 1 and node.output[1] in used else ""
        base = fresh(f"{label}_as_matmul")
        weights, bias = fresh(f"{base}_weights"), fresh(f"{base}_bias")
        product, raw = fresh(f"{base}_product"), fresh(f"{base}_scores")
        matrix = np.ascontiguousarray(coefficients.reshape(classes, features).T)
        graph.initializer.append(numpy_helper.from_array(matrix, weights))
        graph.initializer.append(numpy_helper.from_array(intercepts, bias))
        op = _POST_TRANSFORMS[post]
        if op is None and scores_out:
            raw = scores_out
        nodes.append(helper.make_node("MatMul", [node.input[0], weights], [product],
                                      name=fresh(f"{base}_MatMul")))
        nodes.append(helper.make_node("Add", [product, bias], [raw], name=fresh(f"{base}_Add")))
        if op is not None and scores_out:
            attrs_op = {"axis": 1} if op == "Softmax" else {}
            nodes.append(helper.make_node(op, [raw], [scores_out], name=fresh(f"{base}_{op}"),
                                          **attrs_op))
        if label_out:
            index, table = fresh(f"{base}_argmax"), fresh(f"{base}_labels")
            values = np.array(labels, dtype=np.int64 if isinstance(labels[0], int) else object)
            graph.initializer.append(numpy_helper.from_array(values, table))
            nodes.append(helper.make_node("ArgMax", [raw], [index], axis=1, keepdims=0,
                                          name=fresh(f"{base}_ArgMax")))
            nodes.append(helper.make_node("Gather", [table, index], [label_out], axis=0,
                                          name=fresh(f"{base}_Gather")))
        finish = f" + {op}" if op is not None and scores_out else ""
        notes.append(
            f"rewrote {where} (ai.onnx.ml, {features}×{classes} weights) as "
            f"MatMul + Add{finish} so that ONNX Runtime can quantize its weights"
        )
    del graph.node[:]
    graph.node.extend(nodes)
    return notes


def merge_opset_imports(model: onnx.ModelProto) -> list[str]:
    """One opset entry per domain, and one for the default domain, as the quantizer requires.

    skl2onnx can list the default domain twice, and a graph made only of ``ai.onnx.ml``
    operators may not list it at all; ONNX Runtime's quantizer refuses both.
    """
    from onnx import helper

    versions: dict[str, int] = {}
    for entry in model.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        versions[domain] = max(versions.get(domain, 0), entry.version)
    notes = []
    if len(versions) != len(model.opset_import):
        notes.append("merged duplicate opset entries (one per domain, as the quantizer needs)")
    if "" not in versions:
        versions[""] = _DEFAULT_OPSET
        notes.append(f"added an opset entry for the default domain (version {_DEFAULT_OPSET})")
    del model.opset_import[:]
    for domain in sorted(versions):
        model.opset_import.append(helper.make_opsetid(domain, versions[domain]))
    return notes


def _is_linear_classifier(node: onnx.NodeProto) -> bool:
    return node.op_type == "LinearClassifier" and node.domain == _ML_DOMAIN


def _float_features(info: onnx.ValueInfoProto | None) -> int | None:
    """F when ``info`` is a float tensor ``[N, F]`` with F known, else None."""
    from onnx import TensorProto

    if info is None or not info.type.HasField("tensor_type"):
        return None
    tensor = info.type.tensor_type
    if tensor.elem_type != TensorProto.FLOAT or not tensor.HasField("shape"):
        return None
    dims = tensor.shape.dim
    if len(dims) != 2 or not dims[1].HasField("dim_value") or dims[1].dim_value <= 0:
        return None
    return int(dims[1].dim_value)


def quantized_weights(before: onnx.ModelProto, after: onnx.ModelProto) -> tuple[int, int]:
    """Integer initializers the quantizer added that hold weights (not zero points)."""
    from onnx import TensorProto

    integer_types = {
        TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16,
        TensorProto.INT32, TensorProto.INT4, TensorProto.UINT4,
    }
    existing = {init.name for init in before.graph.initializer}
    added = {
        init.name: init
        for init in after.graph.initializer
        if init.data_type in integer_types and init.name not in existing
    }
    weights = set()
    for node in after.graph.node:
        zero_points = _ZERO_POINT_INPUTS.get(node.op_type, frozenset())
        for index, name in enumerate(node.input):
            if name in added and index not in zero_points:
                weights.add(name)
    values = sum(int(np.prod(added[name].dims, dtype=np.int64)) for name in weights)
    return len(weights), values


def nothing_to_quantize(src: Path, model: onnx.ModelProto, method: str) -> str:
    """Why the quantizer stored no weight of ``model`` (read from ``src``) as an integer."""
    nodes = list(model.graph.node)
    ml_ops = sorted({n.op_type for n in nodes if n.domain == _ML_DOMAIN and _holds_weights(n)})
    weight_ops = sorted({n.op_type for n in nodes if n.op_type in STATIC_OP_TYPES})
    if ml_ops:
        reason = (
            f"its weights live in attributes of ai.onnx.ml operators ({', '.join(ml_ops)}), "
            "which ONNX Runtime's quantizer does not touch"
        )
    elif method == "dynamic" and weight_ops == ["Gemm"]:
        reason = (
            "dynamic quantization does not handle Gemm; try static quantization with "
            "calibration rows"
        )
    elif weight_ops:
        reason = f"its {', '.join(weight_ops)} nodes have no constant float weights to quantize"
    else:
        reason = "it has no MatMul, Gemm or Conv nodes whose weights could be stored as int8"
    return f"nothing to quantize in {src}: {reason}; no file written"


def _holds_weights(node: onnx.NodeProto) -> bool:
    """Whether a node carries float lists or tensors (weights) as attributes."""
    from onnx import AttributeProto

    kinds = (AttributeProto.FLOATS, AttributeProto.TENSOR, AttributeProto.TENSORS)
    return any(attr.type in kinds for attr in node.attribute)
