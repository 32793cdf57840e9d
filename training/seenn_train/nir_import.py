"""Import a NIR graph, or a PyTorch step module, as a seenn model package (format 3).

``seenn-train import-nir NET.nir --dialect snntorch|norse|sinabs --out models/NAME``

The package's ``step.onnx`` evaluates the graph for one timestep. Every neuron state and every value
carried around a loop is an explicit state tensor (input ``state_in_k``, output ``state_out_k``), so
the server batches, swaps and frees rows the way it does for its own packages.

NIR stores continuous-time parameters but no time step and no reset; a **dialect** is the
discretisation one framework applies when it imports a graph (``docs/guides/your-own-snn.md`` has the
table). The rules of one dialect are the coefficients of one generic update, per neuron:

    LIF, IF, LI, Integrator:  v ← decay·v + gain·I + bias
    CubaLIF:                   i ← decay_i·i + gain_i·I + bias_i;  v ← decay·v + gain·i + bias
    spike:  single  z = v > θ, then v ← 0 where z          (snnTorch, Norse)
            multi   z = (v > 0)·trunc(v / θ), then v ← v − z·θ, v ← max(v, floor)   (Sinabs)

A loop in the graph (a recurrent edge) is cut after a neuron: the neuron's output of the previous step
is a state that starts at 0, and the nodes of the loop between it and the next neuron run every step
(a recurrent Affine's bias is added from the first step, as snnTorch's ``RLeaky`` does).

After writing ``step.onnx`` the importer runs it with ONNX Runtime against a float64 reference
simulation of the same rules on random inputs for T steps and refuses to write the package when they
differ beyond float32 rounding. Nothing is written to ``--out`` until every check passed.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .export import ort_session
from .seenn import aggregate, confidence_exit

FORMAT_VERSION = 3
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
SUPPORTED = ("Input", "Output", "Affine", "Linear", "Scale", "Flatten", "Conv1d", "Conv2d", "SumPool2d", "AvgPool2d",
             "Threshold", "IF", "LIF", "LI", "CubaLIF", "Integrator")
# NIR's class names for the supported nodes (the Integrator is ``nir.I``).
_NIR_CLASS = {"I": "Integrator"}
NEURONS = ("IF", "LIF", "LI", "CubaLIF", "Integrator")
SPIKING = ("IF", "LIF", "CubaLIF")
# Relative distance of a membrane from its threshold within which float32 rounding may flip a spike.
FLIP_MARGIN = 1e-5
STATE_ATOL = 5e-5


class NirImportError(Exception):
    """A graph, a parameter or an option the importer cannot honour; the message says what is accepted."""


# --------------------------------------------------------------------------------------------------
# Dialects


@dataclass(frozen=True)
class Dialect:
    name: str
    dt: float
    spikes: str  # single | multi
    doc: str
    unsupported: tuple = ()


DIALECTS = {
    "snntorch": Dialect("snntorch", 1e-4, "single", "snnTorch 1.0 import_from_nir: dt = 1e-4, forward Euler, v > θ, reset to 0"),
    "norse": Dialect("norse", 1e-3, "single", "Norse 1.1 from_nir: dt = 1e-3, forward Euler, v > θ, reset to 0, v starts at v_leak"),
    "sinabs": Dialect("sinabs", 1.0, "multi", "Sinabs 3.1 from_nir: tau in steps, exp(-1/τ) decay, multi-spike, subtract reset",
                      unsupported=("CubaLIF",)),
}


@dataclass
class NeuronRule:
    """The coefficients of one neuron node's update under a dialect (arrays broadcast to the node's shape)."""

    kind: str
    decay: np.ndarray
    gain: np.ndarray
    bias: np.ndarray
    v0: np.ndarray
    threshold: np.ndarray | None = None  # None: no spikes (LI, Integrator)
    floor: np.ndarray | None = None  # Sinabs IF: v ≥ floor after the reset
    syn: tuple | None = None  # CubaLIF: (decay_i, gain_i, bias_i, i0)
    warnings: list = field(default_factory=list)


def _arr(node, name: str) -> np.ndarray:
    v = getattr(node, name)
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    return np.asarray(v, dtype=np.float64)


def _zero(a: np.ndarray) -> np.ndarray:
    return np.zeros_like(a, dtype=np.float64)


def neuron_rule(name: str, kind: str, node, dialect: Dialect) -> NeuronRule:
    """The dialect's discretisation of one NIR neuron node (see the module docstring)."""
    d = dialect
    if kind in d.unsupported:
        raise NirImportError(f"node {name!r} is a {kind}, which the {d.name} dialect does not import; "
                             f"{d.name} supports: {', '.join(n for n in SUPPORTED if n not in d.unsupported)}")
    warnings: list = []

    def need_zero(param: str, why: str):
        if hasattr(node, param) and getattr(node, param) is not None:
            a = _arr(node, param)
            if np.any(a != 0):
                raise NirImportError(f"node {name!r} ({kind}) has {param} ≠ 0 (max |{param}| = {np.abs(a).max():g}), "
                                     f"which the {d.name} dialect cannot honour: {why}")

    def ignored(param: str, expect: float):
        a = _arr(node, param)
        if not np.allclose(a, expect):
            warnings.append(f"node {name!r}: {param} = {a.mean():g} (mean) is ignored by the {d.name} dialect")

    if kind in SPIKING:
        need_zero("v_reset", f"{d.name} resets a spiking neuron to 0" if d.spikes == "single" else "sinabs subtracts θ")
    if d.name in ("snntorch", "sinabs") and kind in ("LIF", "LI", "CubaLIF"):
        need_zero("v_leak", f"{d.name} has no leak potential")

    if kind == "LIF":
        tau, r = _arr(node, "tau"), _arr(node, "r")
        th = _arr(node, "v_threshold")
        if d.name == "snntorch":
            decay, gain, bias, v0 = np.clip(1 - d.dt / tau, 0, 1), r * d.dt / tau, _zero(tau), _zero(tau)
        elif d.name == "norse":
            ignored("r", 1.0)
            vl = _arr(node, "v_leak")
            decay, gain, bias, v0 = 1 - d.dt / tau, d.dt / tau, d.dt / tau * vl, vl
        else:
            ignored("r", 1.0)
            decay, gain, bias, v0 = np.exp(-1.0 / tau), np.ones_like(tau), _zero(tau), _zero(tau)
        return NeuronRule(kind, decay, gain, bias, v0, threshold=th, warnings=warnings)
    if kind == "IF":
        r, th = _arr(node, "r"), _arr(node, "v_threshold")
        if d.name == "snntorch":
            return NeuronRule(kind, np.ones_like(r), r, _zero(r), _zero(r), threshold=th, warnings=warnings)
        ignored("r", 1.0)
        floor = -th if d.name == "sinabs" else None
        return NeuronRule(kind, np.ones_like(r), np.ones_like(r), _zero(r), _zero(r), threshold=th, floor=floor,
                          warnings=warnings)
    if kind == "LI":
        tau, r = _arr(node, "tau"), _arr(node, "r")
        if d.name == "snntorch":
            return NeuronRule(kind, 1 - d.dt / tau, r * d.dt / tau, _zero(tau), _zero(tau), warnings=warnings)
        if d.name == "norse":
            vl = _arr(node, "v_leak")
            return NeuronRule(kind, 1 - d.dt / tau, r * d.dt / tau, d.dt / tau * vl, vl, warnings=warnings)
        if not np.allclose(r, 1):
            raise NirImportError(f"node {name!r} (LI) has r ≠ 1 (mean {r.mean():g}); the sinabs dialect "
                                 "(ExpLeak) needs r = 1")
        return NeuronRule(kind, np.exp(-1.0 / tau), np.ones_like(tau), _zero(tau), _zero(tau), warnings=warnings)
    if kind == "Integrator":
        r = _arr(node, "r")
        gain = r * d.dt if d.name == "norse" else r
        return NeuronRule(kind, np.ones_like(r), gain, _zero(r), _zero(r), warnings=warnings)
    if kind == "CubaLIF":
        ts, tm, r = _arr(node, "tau_syn"), _arr(node, "tau_mem"), _arr(node, "r")
        w_in, th = _arr(node, "w_in"), _arr(node, "v_threshold")
        if d.name == "snntorch":
            syn = (1 - d.dt / ts, d.dt / ts * w_in, _zero(ts), _zero(ts))
            return NeuronRule(kind, 1 - d.dt / tm, r * d.dt / tm, _zero(tm), _zero(tm), threshold=th, syn=syn,
                              warnings=warnings)
        vl = _arr(node, "v_leak")  # norse: both start at v_leak, the current leaks towards it too
        syn = (1 - d.dt / ts, d.dt / ts * w_in, d.dt / ts * vl, vl)
        return NeuronRule(kind, 1 - d.dt / tm, d.dt / tm * r, d.dt / tm * vl, vl, threshold=th, syn=syn,
                          warnings=warnings)
    raise NirImportError(f"node {name!r}: {kind} is not a neuron")


# --------------------------------------------------------------------------------------------------
# Reading and planning


def read_graph(path: Path):
    """``nir.read`` with clear errors for a missing, non-HDF5 or corrupt file."""
    import nir

    path = Path(path)
    if not path.is_file():
        raise NirImportError(f"{path}: no such file (expected a NIR graph, an HDF5 file written by nir.write)")
    with open(path, "rb") as f:
        head = f.read(8)
    if head != HDF5_MAGIC:
        raise NirImportError(f"{path}: not an HDF5 file (first bytes {head!r}); a NIR graph is the HDF5 file nir.write makes")
    try:
        return nir.read(str(path))
    except Exception as e:  # h5py and nir raise many kinds; the message names the file and the cause
        raise NirImportError(f"{path}: cannot read the NIR graph ({type(e).__name__}: {e})") from e


def kind_of(node) -> str:
    k = type(node).__name__
    return _NIR_CLASS.get(k, k)


def flatten_graph(graph, prefix: str = "") -> tuple[dict, list]:
    """Nodes and edges with nested NIRGraphs inlined (a subgraph's Input and Output become pass-throughs)."""
    nodes, edges = {}, []
    for name, node in graph.nodes.items():
        full = prefix + name
        if type(node).__name__ == "NIRGraph":
            sub_nodes, sub_edges = flatten_graph(node, full + ".")
            for n, v in sub_nodes.items():
                if kind_of(v) in ("Input", "Output"):
                    sub_nodes[n] = _PassThrough()
            nodes.update(sub_nodes)
            edges.extend(sub_edges)
        else:
            nodes[full] = node
    for a, b in graph.edges:
        a, b = prefix + a, prefix + b
        # An edge into a subgraph enters at its Input node(s); an edge out of it leaves from its Output.
        a = _port(graph, a, prefix, "Output")
        b = _port(graph, b, prefix, "Input")
        edges.append((a, b))
    return nodes, edges


class _PassThrough:
    """A nested graph's Input or Output node: its value is the sum of its inputs."""


def _port(graph, full: str, prefix: str, kind: str) -> str:
    local = full[len(prefix):]
    node = graph.nodes.get(local)
    if node is None or type(node).__name__ != "NIRGraph":
        return full
    ports = [n for n, v in node.nodes.items() if kind_of(v) == kind]
    if len(ports) != 1:
        raise NirImportError(f"subgraph {full!r} has {len(ports)} {kind} nodes; the importer needs exactly one")
    return _port(node, f"{full}.{ports[0]}", full + ".", kind)


def _sccs(names: list, succ: dict) -> dict:
    """Tarjan's strongly connected components: name -> component id."""
    index, low, comp, stack, on = {}, {}, {}, [], set()
    counter = [0]

    def visit(v):
        work = [(v, iter(succ.get(v, ())))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp[w] = node
                        if w == node:
                            break
            elif nxt not in index:
                index[nxt] = low[nxt] = counter[0]
                counter[0] += 1
                stack.append(nxt)
                on.add(nxt)
                work.append((nxt, iter(succ.get(nxt, ()))))
            elif nxt in on:
                low[node] = min(low[node], index[nxt])

    for v in names:
        if v not in index:
            visit(v)
    return comp


@dataclass
class Plan:
    nodes: dict
    kinds: dict
    order: list  # evaluation order within one step
    inputs: dict  # name -> [(source, delayed)]
    input_node: str
    output_node: str
    delayed: list  # sources whose previous-step output is a state
    frame_shape: tuple = ()
    shapes: dict = field(default_factory=dict)  # node -> output shape (without batch)
    rules: dict = field(default_factory=dict)  # neuron node -> NeuronRule
    states: list = field(default_factory=list)  # [(label, node, quantity, shape, v0 array)]
    warnings: list = field(default_factory=list)


def plan_graph(graph, dialect: Dialect) -> Plan:
    nodes, edges = flatten_graph(graph)
    kinds = {}
    for name, node in nodes.items():
        if isinstance(node, _PassThrough):
            kinds[name] = "PassThrough"
            continue
        k = kind_of(node)
        if k not in SUPPORTED:
            raise NirImportError(f"node {name!r} is a {k}, which the importer does not support; supported nodes: "
                                 f"{', '.join(SUPPORTED)}")
        kinds[name] = k
    for a, b in edges:
        for n in (a, b):
            if n not in nodes:
                raise NirImportError(f"edge ({a!r}, {b!r}) names {n!r}, which is not a node of the graph")
    ins = [n for n, k in kinds.items() if k == "Input"]
    outs = [n for n, k in kinds.items() if k == "Output"]
    if not outs:
        raise NirImportError("the graph has no Output node; the importer reads the network's answer from exactly one Output")
    if len(outs) > 1 or len(ins) != 1:
        raise NirImportError(f"the graph has {len(ins)} Input and {len(outs)} Output nodes ({', '.join(ins + outs)}); "
                             "the importer needs exactly one of each")
    edges = sorted(set(edges))
    succ: dict = {}
    for a, b in edges:
        succ.setdefault(a, []).append(b)
    comp = _sccs(sorted(nodes), succ)
    # Cut every loop after a neuron: an edge inside a cycle whose source is a neuron carries that
    # neuron's previous-step output.
    delayed_edges = {(a, b) for a, b in edges if comp[a] == comp[b] and kinds[a] in NEURONS + ("Threshold",)}
    forward = [(a, b) for a, b in edges if (a, b) not in delayed_edges]
    order = _topo(sorted(nodes), forward)
    if order is None:
        raise NirImportError("the graph has a loop with no neuron in it (a cycle of stateless nodes): its value at a "
                             "step would depend on itself; put a neuron (LIF, IF, LI, CubaLIF, Integrator) in the loop")
    inputs = {n: [] for n in nodes}
    for a, b in edges:
        inputs[b].append((a, (a, b) in delayed_edges))
    for n in order:
        if kinds[n] not in ("Input",) and not inputs[n]:
            raise NirImportError(f"node {n!r} ({kinds[n]}) has no incoming edge")
    delayed = sorted({a for a, _ in delayed_edges})
    return Plan(nodes, kinds, order, inputs, ins[0], outs[0], delayed)


def _topo(names: list, edges: list):
    indeg = {n: 0 for n in names}
    succ: dict = {}
    for a, b in edges:
        indeg[b] += 1
        succ.setdefault(a, []).append(b)
    ready = sorted(n for n in names if indeg[n] == 0)
    order = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for m in succ.get(n, ()):
            indeg[m] -= 1
            if indeg[m] == 0:
                ready.append(m)
        ready.sort()
    return order if len(order) == len(names) else None


# --------------------------------------------------------------------------------------------------
# Stateless layers (shared by the ONNX module and the reference; float32 or float64 tensors)


def _pair(v, n=2):
    if isinstance(v, str):
        return v
    a = np.atleast_1d(np.asarray(v)).astype(int).tolist()
    return tuple(a * n if len(a) == 1 else a)


def _layer_params(name: str, kind: str, node, dtype) -> dict:
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=dtype)  # noqa: E731
    if kind == "Affine":
        return {"w": t(_arr(node, "weight")), "b": t(_arr(node, "bias"))}
    if kind == "Linear":
        return {"w": t(_arr(node, "weight"))}
    if kind == "Scale":
        return {"s": t(_arr(node, "scale"))}
    if kind == "Threshold":
        return {"th": t(_arr(node, "threshold"))}
    if kind in ("Conv1d", "Conv2d"):
        n = 1 if kind == "Conv1d" else 2
        pad = node.padding
        if isinstance(pad, str):
            if pad not in ("same", "valid"):
                raise NirImportError(f"node {name!r} ({kind}): padding {pad!r}; accepted: an int, a pair, 'same' or 'valid'")
        else:
            pad = _pair(pad, n)
        return {"w": t(_arr(node, "weight")), "b": t(_arr(node, "bias")), "stride": _pair(node.stride, n),
                "padding": pad, "dilation": _pair(node.dilation, n), "groups": int(node.groups)}
    if kind in ("SumPool2d", "AvgPool2d"):
        return {"k": _pair(node.kernel_size), "s": _pair(node.stride), "p": _pair(node.padding)}
    if kind == "Flatten":
        return {"start": int(node.start_dim), "end": int(node.end_dim),
                "in": None if node.input_type.get("input") is None else tuple(int(v) for v in np.atleast_1d(node.input_type["input"]))}
    return {}


def apply_layer(kind: str, p: dict, x: torch.Tensor) -> torch.Tensor:
    """One stateless node on a batch ``x`` [N, ...]."""
    if kind == "Affine":
        return torch.matmul(x, p["w"].transpose(-1, -2)) + p["b"]
    if kind == "Linear":
        return torch.matmul(x, p["w"].transpose(-1, -2))
    if kind == "Scale":
        return x * p["s"]
    if kind == "Threshold":
        return (x > p["th"]).to(x.dtype)
    if kind == "Conv1d":
        return F.conv1d(x, p["w"], p["b"], p["stride"], p["padding"], p["dilation"], p["groups"])
    if kind == "Conv2d":
        return F.conv2d(x, p["w"], p["b"], p["stride"], p["padding"], p["dilation"], p["groups"])
    if kind == "AvgPool2d":
        return F.avg_pool2d(x, p["k"], p["s"], p["p"])
    if kind == "SumPool2d":
        # The average times the window's size, zero padding counted: what Norse (LPPool2d with p = 1)
        # and Sinabs compute, in the same float operations.
        return F.avg_pool2d(x, p["k"], p["s"], p["p"]) * float(p["k"][0] * p["k"][1])
    if kind == "Flatten":
        nd = x.dim() - 1
        s = p["start"] % nd if p["start"] >= 0 else nd + p["start"]
        e = p["end"] % nd if p["end"] >= 0 else nd + p["end"]
        if s >= nd:  # NIR dims exclude the batch; a start beyond the rank flattens nothing
            return x
        return torch.flatten(x, s + 1, e + 1)
    if kind in ("Input", "Output", "PassThrough"):
        return x
    raise NirImportError(f"no layer rule for {kind}")


def _broadcast(name: str, kind: str, param: str, a: np.ndarray, shape: tuple) -> np.ndarray:
    if a.size == 1:
        return np.full(shape, float(a.reshape(-1)[0]))
    if tuple(a.shape) == tuple(shape):
        return a
    if a.size == int(np.prod(shape)):
        return a.reshape(shape)
    raise NirImportError(f"node {name!r} ({kind}): {param} has shape {list(a.shape)}, but the node's input has shape "
                         f"{list(shape)} (per sample); a parameter must have the input's shape or one value")


def infer(plan: Plan, dialect: Dialect, frame_shape: tuple | None) -> Plan:
    """Per-node shapes (one zero frame through the stateless layers), the neuron rules, the state list."""
    inp = plan.nodes[plan.input_node]
    declared = inp.input_type.get("input") if hasattr(inp, "input_type") else None
    declared = None if declared is None else tuple(int(v) for v in np.atleast_1d(declared))
    if frame_shape is None:
        if declared is None:
            raise NirImportError("the Input node declares no shape; pass --input-shape (one frame, without batch and time)")
        frame_shape = declared
    elif declared is not None and int(np.prod(declared)) != int(np.prod(frame_shape)):
        raise NirImportError(f"--input-shape {list(frame_shape)} does not match the Input node's shape {list(declared)}")
    plan.frame_shape = tuple(frame_shape)
    params = {n: _layer_params(n, plan.kinds[n], plan.nodes[n], torch.float64) for n in plan.order}
    values: dict = {}
    pending = list(plan.order)
    partial = False  # after a pass with no progress: a node may take its shape from the inputs known so far
    while pending:
        progressed = False
        for n in list(pending):
            k = plan.kinds[n]
            if k == "Input":
                values[n] = torch.zeros((1, *frame_shape), dtype=torch.float64)
                plan.shapes[n] = tuple(frame_shape)
                pending.remove(n)
                progressed = True
                continue
            fwd = [s for s, delayed in plan.inputs[n] if not delayed]
            back = [s for s, delayed in plan.inputs[n] if delayed]
            srcs = [values[s] for s in fwd if s in values] + [torch.zeros_like(values[s]) for s in back if s in values]
            if not srcs or (not partial and any(s not in values for s in fwd)):
                continue
            _shape_node(plan, dialect, params, values, n, k, srcs)
            pending.remove(n)
            progressed = True
        if not progressed and not partial:
            partial = True
        elif not progressed:
            raise NirImportError(f"cannot work out the shapes of nodes {', '.join(pending)}: they are fed only by "
                                 "loops whose sources have no shape yet")
    for s, delayed in ((s, d) for n in plan.order for s, d in plan.inputs[n]):
        if delayed and s not in plan.shapes:
            raise NirImportError(f"node {s!r} feeds a loop but has no shape")
    plan.shapes[plan.input_node] = tuple(frame_shape)
    # Every node sums inputs of one shape (loop edges included).
    for n in plan.order:
        got = {plan.shapes[s] for s, _ in plan.inputs[n]}
        if len(got) > 1:
            raise NirImportError(f"node {n!r} ({plan.kinds[n]}) sums inputs of different shapes: "
                                 f"{', '.join(f'{s!r} {list(plan.shapes[s])}' for s, _ in plan.inputs[n])}")
    states = []
    for n in plan.order:
        r = plan.rules.get(n)
        if r is None:
            continue
        if r.syn is not None:
            states.append((f"{n}.i", n, "i", plan.shapes[n], r.syn[3]))
        states.append((f"{n}.v", n, "v", plan.shapes[n], r.v0))
    for s in plan.delayed:
        states.append((f"{s}.prev", s, "prev", plan.shapes[s], np.zeros(plan.shapes[s])))
    plan.states = states
    out_shape = plan.shapes[plan.output_node]
    if len(out_shape) != 1:
        plan.warnings.append(f"the Output's shape {list(out_shape)} is flattened to [{int(np.prod(out_shape))}] classes")
    return plan


def _shape_node(plan: Plan, dialect: Dialect, params: dict, values: dict, n: str, k: str, srcs: list):
    shapes = {tuple(v.shape[1:]) for v in srcs}
    if len(shapes) > 1:
        raise NirImportError(f"node {n!r} ({k}) sums inputs of different shapes: "
                             f"{', '.join(str(list(s)) for s in sorted(shapes))}")
    x = srcs[0]
    try:
        values[n] = x if k in NEURONS else apply_layer(k, params[n], x)
    except RuntimeError as e:
        raise NirImportError(f"node {n!r} ({k}) cannot take an input of shape {list(x.shape[1:])}: {e}") from e
    plan.shapes[n] = tuple(values[n].shape[1:])
    if k in NEURONS:
        shape = plan.shapes[n]
        for param in ("tau", "tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in"):
            if getattr(plan.nodes[n], param, None) is not None:
                _broadcast(n, k, param, _arr(plan.nodes[n], param), shape)
        rule = neuron_rule(n, k, plan.nodes[n], dialect)
        for attr in ("decay", "gain", "bias", "v0", "threshold", "floor"):
            a = getattr(rule, attr)
            if a is not None:
                setattr(rule, attr, _broadcast(n, k, attr, a, shape))
        if rule.syn is not None:
            rule.syn = tuple(_broadcast(n, k, "synaptic parameter", a, shape) for a in rule.syn)
        plan.rules[n] = rule
        plan.warnings.extend(rule.warnings)


# --------------------------------------------------------------------------------------------------
# The step module (exported to ONNX) and the reference simulation


def _spike_update(rule_t: dict, v: torch.Tensor, multi: bool):
    """(spikes, v after reset) for a spiking neuron; tensors of the module's dtype."""
    th = rule_t["threshold"]
    if multi:
        # Sinabs: (v > 0)·trunc(v / θ); for v > 0 trunc is floor (ONNX has Floor, not Trunc).
        z = torch.where(v > 0, torch.floor(v / th), torch.zeros_like(v))
        v = v - z * th
    else:
        z = (v > th).to(v.dtype)
        v = torch.where(v > th, torch.zeros_like(v), v)
    if "floor" in rule_t:
        v = torch.maximum(v, rule_t["floor"])
    return z, v


class StepModule(torch.nn.Module):
    """One timestep of the planned graph: ``forward(x, *states) -> (out, *states)``.

    A state is stored relative to its initial value (``stored = value − v0``) when v0 is not one
    number, so every state starts at a scalar (the manifest's ``initial_value``)."""

    def __init__(self, plan: Plan, dialect: Dialect):
        super().__init__()
        self.plan, self.multi = plan, dialect.spikes == "multi"
        self.params = {n: _layer_params(n, plan.kinds[n], plan.nodes[n], torch.float32) for n in plan.order}
        self.rules = {}
        for n, r in plan.rules.items():
            d = {k: torch.as_tensor(getattr(r, k), dtype=torch.float32) for k in ("decay", "gain", "bias")}
            if r.threshold is not None:
                d["threshold"] = torch.as_tensor(r.threshold, dtype=torch.float32)
            if r.floor is not None:
                d["floor"] = torch.as_tensor(r.floor, dtype=torch.float32)
            if r.syn is not None:
                d["syn"] = tuple(torch.as_tensor(a, dtype=torch.float32) for a in r.syn[:3])
            self.rules[n] = d
        self.offsets = [None if np.all(v0 == v0.reshape(-1)[0]) else torch.as_tensor(v0, dtype=torch.float32)
                        for _, _, _, _, v0 in plan.states]
        self.index = {(node, q): i for i, (_, node, q, _, _) in enumerate(plan.states)}

    def initial_values(self) -> list:
        return [0.0 if off is not None else float(v0.reshape(-1)[0]) for off, (_, _, _, _, v0) in zip(self.offsets, self.plan.states)]

    def forward(self, x, *states):
        plan = self.plan
        st = [s if off is None else s + off for s, off in zip(states, self.offsets)]
        new = list(st)
        values = {}
        for n in plan.order:
            k = plan.kinds[n]
            if k == "Input":
                values[n] = x
                continue
            terms = [st[self.index[(s, "prev")]] if delayed else values[s] for s, delayed in plan.inputs[n]]
            total = terms[0]
            for t in terms[1:]:
                total = total + t
            if k in NEURONS:
                r = self.rules[n]
                if "syn" in r:
                    di, gi, bi = r["syn"]
                    i = di * st[self.index[(n, "i")]] + gi * total + bi
                    new[self.index[(n, "i")]] = i
                    total = i
                v = r["decay"] * st[self.index[(n, "v")]] + r["gain"] * total + r["bias"]
                if "threshold" in r:
                    z, v = _spike_update(r, v, self.multi)
                    values[n] = z
                else:
                    values[n] = v
                new[self.index[(n, "v")]] = v
            else:
                values[n] = apply_layer(k, self.params[n], total)
        for s in plan.delayed:
            new[self.index[(s, "prev")]] = values[s]
        out = values[plan.output_node].reshape(x.shape[0], -1)
        return (out, *[s if off is None else s - off for s, off in zip(new, self.offsets)])


def reference_run(plan: Plan, dialect: Dialect, frames: np.ndarray, teacher: list | None = None):
    """The dialect's rules in float64, eagerly, over ``frames`` [T, N, *frame]. Returns per-step
    outputs [T, N, K], every state after each step (list of [T, N, *shape]) and, per step and sample,
    the smallest relative distance of a spiking membrane from its threshold before the spike decision.

    With ``teacher`` (states [T, N, ...] per state, float32 from ONNX Runtime), each step starts from
    the teacher's states of the previous step instead of its own: a one-step check per step."""
    dt = torch.float64
    params = {n: _layer_params(n, plan.kinds[n], plan.nodes[n], dt) for n in plan.order}
    tt = lambda a: torch.as_tensor(a, dtype=dt)  # noqa: E731
    t_max, n_rows = frames.shape[0], frames.shape[1]
    state = {(node, q): tt(np.broadcast_to(v0, (n_rows, *shape)).copy()) for _, node, q, shape, v0 in plan.states}
    outs, rec, margins = [], {key: [] for key in state}, []
    for t in range(t_max):
        if teacher is not None and t > 0:
            for (key, seq) in zip(state, teacher):
                state[key] = tt(seq[t - 1])
        vals, margin = {}, torch.full((n_rows,), math.inf, dtype=dt)
        new = dict(state)
        for n in plan.order:
            k = plan.kinds[n]
            if k == "Input":
                vals[n] = tt(frames[t])
                continue
            total = sum(state[(s, "prev")] if d else vals[s] for s, d in plan.inputs[n])
            if k not in NEURONS:
                vals[n] = apply_layer(k, params[n], total)
                continue
            r = plan.rules[n]
            if r.syn is not None:
                i = tt(r.syn[0]) * state[(n, "i")] + tt(r.syn[1]) * total + tt(r.syn[2])
                new[(n, "i")] = i
                total = i
            v = tt(r.decay) * state[(n, "v")] + tt(r.gain) * total + tt(r.bias)
            if r.threshold is None:
                vals[n] = v
            else:
                th = tt(r.threshold)
                rel = ((v - th).abs() / th.abs().clamp(min=1e-12)).reshape(n_rows, -1).min(1).values
                if dialect.spikes == "multi":  # multi-spike: every multiple of θ is a decision boundary
                    q = v / th
                    near = torch.where(q.round() >= 1, (q - q.round()).abs(), torch.full_like(q, math.inf))
                    rel = torch.minimum(rel, near.reshape(n_rows, -1).min(1).values)
                margin = torch.minimum(margin, rel)
                rt = {"threshold": th}
                if r.floor is not None:
                    rt["floor"] = tt(r.floor)
                z, v = _spike_update(rt, v, dialect.spikes == "multi")
                vals[n] = z
            new[(n, "v")] = v
        for s in plan.delayed:
            new[(s, "prev")] = vals[s]
        state = new
        outs.append(vals[plan.output_node].reshape(n_rows, -1).numpy())
        for key in rec:
            rec[key].append(state[key].numpy())
        margins.append(margin.numpy())
    return np.stack(outs), [np.stack(rec[key]) for key in rec], np.stack(margins)


# --------------------------------------------------------------------------------------------------
# Export, checks, the package


def ort_run(session, frames: np.ndarray, initial: list):
    """step.onnx over frames [T, N, ...], every state starting at its initial value: outputs
    [T, N, K] and the stored states after each step."""
    n = frames.shape[1]
    ins = session.get_inputs()
    states = [np.full((n, *[int(d) for d in i.shape[1:]]), v, np.float32) for i, v in zip(ins[1:], initial)]
    outs, rec = [], [[] for _ in initial]
    for x in frames:
        res = session.run(None, {ins[0].name: x.astype(np.float32), **{i.name: s for i, s in zip(ins[1:], states)}})
        outs.append(res[0])
        states = res[1:]
        for k, s in enumerate(states):
            rec[k].append(s)
    return np.stack(outs), [np.stack(r) for r in rec]


def random_frames(rng: np.random.Generator, t: int, n: int, shape: tuple, dtype: str, scale: float) -> np.ndarray:
    if dtype == "bool":
        return rng.random((t, n, *shape)) < min(0.5, 0.3 * scale)
    if dtype == "uint8":
        return rng.integers(0, max(2, int(4 * scale)), (t, n, *shape)).astype(np.uint8)
    return (rng.random((t, n, *shape)) * scale).astype(np.float32)


@dataclass
class CheckReport:
    steps: int
    rows: int
    max_output_diff: float
    max_state_diff: float
    flips: int
    min_margin: float
    free_run_equal_steps: float
    spike_rate: float

    def as_dict(self) -> dict:
        return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in self.__dict__.items()}


def check_package(session, module: StepModule, plan: Plan, dialect: Dialect, timesteps: int, dtype: str,
                  per_step: bool, seed: int = 0, rows: int = 8, scale: float = 1.0) -> CheckReport:
    """step.onnx (ONNX Runtime, float32) against the float64 reference of the dialect's rules.

    One-step check: every step starts both from ONNX Runtime's states of the previous step; outputs
    and states must agree (states within 5e-5 + 1e-5·|v|) except on a row where a membrane sat within
    float32 rounding (1e-5 relative) of its threshold at that step. Also reported: how many steps of a
    free run agree exactly, which rounding can end early."""
    rng = np.random.default_rng(seed)
    frames = random_frames(rng, timesteps if per_step else 1, rows, plan.frame_shape, dtype, scale).astype(np.float32)
    if not per_step:
        frames = np.repeat(frames, timesteps, axis=0)
    o_ort, s_ort = ort_run(session, frames, module.initial_values())
    actual = [s if off is None else s + off.numpy() for s, off in zip(s_ort, module.offsets)]
    o_ref, s_ref, margins = reference_run(plan, dialect, frames, teacher=actual)
    bad = np.zeros((timesteps, rows), bool)
    max_o = float(np.abs(o_ort - o_ref).max()) if o_ref.size else 0.0
    bad |= (np.abs(o_ort - o_ref) > 1e-4 + 1e-5 * np.abs(o_ref)).reshape(timesteps, rows, -1).any(-1)
    max_s = 0.0
    for a, b in zip(actual, s_ref):
        d = np.abs(a - b)
        max_s = max(max_s, float(d.max()) if d.size else 0.0)
        bad |= (d > STATE_ATOL + 1e-5 * np.abs(b)).reshape(timesteps, rows, -1).any(-1)
    unexplained = bad & ~(margins < FLIP_MARGIN)
    if unexplained.any():
        t, r = map(int, np.argwhere(unexplained)[0])
        raise NirImportError(
            f"step.onnx differs from the {dialect.name} reference simulation at step {t + 1}, row {r} "
            f"(max output diff {max_o:.3g}, max state diff {max_s:.3g}; nearest membrane to a threshold "
            f"{margins[t, r]:.3g} relative, above float32 rounding): the package is not written")
    free_o, _, _ = reference_run(plan, dialect, frames)
    equal = (np.abs(o_ort - free_o) <= 1e-4 + 1e-5 * np.abs(free_o)).reshape(timesteps, -1).all(-1)
    return CheckReport(timesteps, rows, max_o, max_s, int(bad.sum()), float(margins.min()), float(equal.mean()),
                       float((o_ort != 0).mean()))


def _onnx_export(module: torch.nn.Module, plan: Plan, path: Path):
    from .export import onnx_export

    x = torch.zeros((2, *plan.frame_shape))
    states = [torch.zeros((2, *shape)) for _, _, _, shape, _ in plan.states]
    names_in = ["input"] + [f"state_in_{i}" for i in range(len(states))]
    names_out = ["logits"] + [f"state_out_{i}" for i in range(len(states))]
    with torch.no_grad():
        onnx_export(module, (x, *states), path, names_in, names_out)


def read_labels(spec: str | None, k: int) -> list:
    if not spec:
        return [f"class_{i}" for i in range(k)]
    p = Path(spec)
    if p.is_file():
        text = p.read_text()
        labels = json.loads(text) if p.suffix == ".json" else [ln.strip() for ln in text.splitlines() if ln.strip()]
    else:
        labels = [s.strip() for s in spec.split(",")]
    if len(labels) != k:
        raise NirImportError(f"{len(labels)} labels given, but the network's output has {k} values; give one label per output")
    return [str(v) for v in labels]


@dataclass
class ImportOptions:
    dialect: str = "snntorch"
    timesteps: int = 16
    dtype: str = "float32"
    time: str = "per_step"
    aggregation: str | None = None
    labels: str | None = None
    name: str | None = None
    input_shape: tuple | None = None
    alpha: float = 0.9
    temperature: float = 1.0
    seed: int = 0
    force: bool = False


def _check_options(o: ImportOptions):
    if o.dialect not in DIALECTS:
        raise NirImportError(f"dialect {o.dialect!r}; accepted: {', '.join(DIALECTS)}")
    if o.dtype not in ("float32", "uint8", "bool"):
        raise NirImportError(f"input dtype {o.dtype!r}; accepted: float32, uint8, bool")
    if o.time not in ("static", "per_step"):
        raise NirImportError(f"time mode {o.time!r}; accepted: static (the same input every step), per_step (one frame per step)")
    if o.aggregation not in (None, "sum", "mean", "last"):
        raise NirImportError(f"aggregation {o.aggregation!r}; accepted: sum, mean, last")
    if not 1 <= o.timesteps <= 1024:
        raise NirImportError(f"--timesteps {o.timesteps}; accepted: 1..1024")
    if not 0 < o.alpha < 1 or o.temperature <= 0:
        raise NirImportError("--alpha must lie in (0, 1) and --temperature be positive")


def _prepare_out(out: Path, force: bool) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise NirImportError(f"{out} exists and is not empty; choose another --out or pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def _publish(tmp: Path, out: Path):
    """Moves the finished package into place: a reader sees the old folder or the new one, never half."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def write_package(module: StepModule, plan: Plan, dialect_name: str, o: ImportOptions, out: Path, source: dict,
                  check: CheckReport, extra_files: dict | None = None, tmp: Path | None = None) -> dict:
    """Writes a format-3 package from an exported, checked step graph in ``tmp``."""
    k = int(np.prod(plan.shapes[plan.output_node]))
    labels = read_labels(o.labels, k)
    agg = o.aggregation or ("last" if plan.kinds.get(_feeder(plan)) == "LI" else "sum")
    name = o.name or Path(out).name
    states = [{"input": f"state_in_{i}", "output": f"state_out_{i}", "shape": [int(d) for d in shape],
               "initial_value": iv, "name": label}
              for i, ((label, _, _, shape, _), iv) in enumerate(zip(plan.states, module.initial_values()))]
    counts: dict = {}
    for n in plan.order:
        counts[plan.kinds[n]] = counts.get(plan.kinds[n], 0) + 1
    d = DIALECTS[dialect_name] if dialect_name in DIALECTS else None
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": "1",
        "kind": source.get("kind", "nir"),
        "architecture": source.get("architecture", f"NIR graph, {dialect_name} dialect"),
        "labels": labels,
        "input": {"kind": "tensor", "shape": [int(v) for v in plan.frame_shape], "dtype": o.dtype, "time": o.time},
        "timesteps": o.timesteps,
        "neuron": {"dialect": dialect_name, "dt": d.dt if d else None, "rules": d.doc if d else source.get("rules", ""),
                   "nodes": counts},
        "exit": {"aggregation": agg, "temperature": o.temperature, "default_rule": "confidence", "default_alpha": o.alpha},
        "graphs": {"step": {"file": "step.onnx", "input": "input", "logits": "logits", "states": states}},
        "source": source,
        "import_check": check.as_dict(),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for rel, data in (extra_files or {}).items():
        (tmp / rel).write_bytes(data)
    golden = make_golden(tmp, manifest, plan, o)
    (tmp / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    (tmp / "MODEL_CARD.md").write_text(model_card(manifest, plan, check))
    _publish(tmp, Path(out))
    return manifest


def _feeder(plan: Plan) -> str | None:
    srcs = plan.inputs.get(plan.output_node, [])
    return srcs[0][0] if len(srcs) == 1 else None


def make_golden(folder: Path, manifest: dict, plan: Plan, o: ImportOptions, samples: np.ndarray | None = None,
                labels: np.ndarray | None = None, count: int = 4) -> dict:
    """golden.json and samples/*.npy: each sample run alone (batch 1) by ONNX Runtime. Without labelled
    samples (right after an import) the inputs are random and ``label`` is the class after T steps."""
    per_step = manifest["input"]["time"] == "per_step"
    t_max = manifest["timesteps"]
    if samples is None:
        rng = np.random.default_rng(o.seed + 1)
        samples = random_frames(rng, t_max if per_step else 1, count, plan.frame_shape, o.dtype, 1.0)
        samples = np.moveaxis(samples, 0, 1) if per_step else samples[0]
    sess = ort_session(folder / "step.onnx")
    initial = [s["initial_value"] for s in manifest["graphs"]["step"]["states"]]
    (folder / "samples").mkdir(exist_ok=True)
    ex = manifest["exit"]
    entries = []
    for i, x in enumerate(samples):
        frames = (x[:, None] if per_step else np.repeat(x[None, None], t_max, 0)).astype(np.float32)
        z, _ = ort_run(sess, frames, initial)
        z = z[:, 0][None]  # [1, T, K]
        exit_t, pred = confidence_exit(z, ex["default_alpha"], ex["temperature"], aggregation=ex["aggregation"])
        label = int(labels[i]) if labels is not None else int(aggregate(z, ex["aggregation"])[0, -1].argmax())
        f = f"samples/{i:03d}.npy"
        np.save(folder / f, np.asarray(x))
        entries.append({"file": f, "label": label, "logits": z[0].tolist(), "exit_timestep": int(exit_t[0]),
                        "class_id": int(pred[0])})
    return {"rule": "confidence", "alpha": ex["default_alpha"], "temperature": ex["temperature"],
            "aggregation": ex["aggregation"], "atol": 1e-4, "batch_size": 1,
            "labels_are": "true labels" if labels is not None else "the class after T steps (random inputs)",
            "samples": entries}


def model_card(manifest: dict, plan: Plan, check: CheckReport) -> str:
    src = manifest["source"]
    lines = [f"# {manifest['name']}", "",
             f"Imported by `seenn-train import-nir` from `{src.get('file', '?')}` (sha256 `{src.get('sha256', '?')[:16]}…`) "
             f"with the **{manifest['neuron']['dialect']}** dialect: {manifest['neuron']['rules']}.", "",
             f"- input: {manifest['input']['kind']} {manifest['input']['shape']}, {manifest['input']['dtype']}, "
             f"{manifest['input']['time']}; T = {manifest['timesteps']}",
             f"- output: {len(manifest['labels'])} values, aggregated by `{manifest['exit']['aggregation']}`",
             f"- nodes: {', '.join(f'{k} ×{v}' for k, v in sorted(manifest['neuron']['nodes'].items()))}",
             f"- states ({len(plan.states)}): {', '.join(s[0] for s in plan.states)}", "",
             "## Import check", "",
             f"step.onnx (ONNX Runtime, float32) against the dialect's float64 reference simulation, {check.rows} random "
             f"inputs × {check.steps} steps, one step at a time from the same states: max output difference "
             f"{check.max_output_diff:.3g}, max state difference {check.max_state_diff:.3g}; "
             f"{check.flips} (step, row) pairs differ, each where a membrane sat within float32 rounding of its "
             f"threshold (nearest: {check.min_margin:.3g} relative). A free run agrees exactly on "
             f"{100 * check.free_run_equal_steps:.0f}% of the steps. Output non-zero rate {check.spike_rate:.2f}.", "",
             "Accuracy, the α table and the curve come from `seenn calibrate` on your own data.", ""]
    if plan.warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in plan.warnings] + [""]
    return "\n".join(lines)


def import_nir(path: Path, out: Path, o: ImportOptions, log=print) -> dict:
    """The whole command: read, plan, export, check, write. Raises NirImportError (nothing written)."""
    _check_options(o)
    dialect = DIALECTS[o.dialect]
    graph = read_graph(path)
    plan = infer(plan_graph(graph, dialect), dialect, o.input_shape)
    for w in plan.warnings:
        log(f"warning: {w}")
    tmp = _prepare_out(out, o.force)
    try:
        module = StepModule(plan, dialect).eval()
        _onnx_export(module, plan, tmp / "step.onnx")
        sess = ort_session(tmp / "step.onnx")
        check = check_package(sess, module, plan, dialect, o.timesteps, o.dtype, o.time == "per_step", seed=o.seed)
        log(f"check: max output diff {check.max_output_diff:.3g}, max state diff {check.max_state_diff:.3g}, "
            f"{check.flips} rounding flips (nearest membrane {check.min_margin:.3g} of θ), free run equal on "
            f"{100 * check.free_run_equal_steps:.0f}% of steps")
        raw = Path(path).read_bytes()
        source = {"file": Path(path).name, "sha256": hashlib.sha256(raw).hexdigest(), "format": "nir",
                  "importer": "seenn-train import-nir", "dialect": o.dialect, "kind": "nir"}
        return write_package(module, plan, o.dialect, o, out, source, check, {"source.nir": raw}, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------------
# A plain PyTorch step module (networks NIR cannot carry)


def load_factory(spec: str):
    """``pkg.mod:factory`` → the module the factory returns (the current directory is importable)."""
    import importlib
    import os
    import sys

    if ":" not in spec:
        raise NirImportError(f"--module {spec!r}: expected MODULE:FACTORY, e.g. mynet.step:build")
    mod_name, fn = spec.split(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:
        raise NirImportError(f"--module {spec!r}: cannot import {mod_name!r} ({type(e).__name__}: {e})") from e
    factory = getattr(mod, fn, None)
    if not callable(factory):
        raise NirImportError(f"--module {spec!r}: {mod_name} has no callable {fn!r}")
    net = factory()
    if not isinstance(net, torch.nn.Module):
        raise NirImportError(f"--module {spec!r}: the factory returned a {type(net).__name__}, not a torch.nn.Module")
    shapes = getattr(net, "state_shapes", None)
    if shapes is None:
        raise NirImportError(f"--module {spec!r}: the module needs a `state_shapes` attribute (one shape per state "
                             "tensor, without the batch), in the order forward(x, *states) takes and returns them")
    return net, [tuple(int(d) for d in s) for s in shapes]


class _ModuleStep(torch.nn.Module):
    """A user's step module with the state offsets folded like StepModule (initial values are scalars)."""

    def __init__(self, net: torch.nn.Module, initial: list):
        super().__init__()
        self.net, self.initial = net, initial
        self.offsets = [None] * len(initial)

    def initial_values(self) -> list:
        return [float(v) for v in self.initial]

    def forward(self, x, *states):
        out = self.net(x, *states)
        if not isinstance(out, (tuple, list)) or len(out) != len(states) + 1:
            raise NirImportError(f"the step module returned {type(out).__name__} of length "
                                 f"{len(out) if isinstance(out, (tuple, list)) else 1}; expected (out, *states) with "
                                 f"{len(states)} states")
        return (out[0].reshape(x.shape[0], -1), *out[1:])


def import_module(spec: str, out: Path, o: ImportOptions, log=print) -> dict:
    """``import-nir --module pkg.mod:factory``: the same package, from a PyTorch step module."""
    _check_options(o)
    if o.input_shape is None:
        raise NirImportError("--module needs --input-shape (one frame, without batch and time)")
    net, shapes = load_factory(spec)
    net = net.eval()
    initial = [float(v) for v in getattr(net, "initial_values", [0.0] * len(shapes))]
    step = _ModuleStep(net, initial).eval()
    x = torch.zeros((2, *o.input_shape))
    st = [torch.full((2, *s), v) for s, v in zip(shapes, initial)]
    with torch.no_grad():
        res = step(x, *st)
    for i, (a, b) in enumerate(zip(res[1:], st)):
        if tuple(a.shape) != tuple(b.shape):
            raise NirImportError(f"state {i}: the module returned shape {list(a.shape[1:])} for a state declared "
                                 f"{list(b.shape[1:])} in state_shapes")
    k = int(res[0].shape[1])
    plan = Plan({}, {"output": "Output"}, ["output"], {"output": []}, "input", "output", [],
                frame_shape=tuple(o.input_shape), shapes={"output": (k,)},
                states=[(f"state_{i}", "module", "v", s, np.full(s, v)) for i, (s, v) in enumerate(zip(shapes, initial))])
    tmp = _prepare_out(out, o.force)
    try:
        from .export import onnx_export

        names_in = ["input"] + [f"state_in_{i}" for i in range(len(shapes))]
        names_out = ["logits"] + [f"state_out_{i}" for i in range(len(shapes))]
        with torch.no_grad():
            onnx_export(step, (x, *st), tmp / "step.onnx", names_in, names_out)
        sess = ort_session(tmp / "step.onnx")
        check = _check_module(sess, step, plan, o)
        log(f"check: max output diff {check.max_output_diff:.3g}, max state diff {check.max_state_diff:.3g}")
        source = {"file": spec, "format": "pytorch step module", "importer": "seenn-train import-nir --module",
                  "dialect": "module", "kind": "module", "architecture": f"PyTorch step module {spec}",
                  "rules": "the module's own forward(x, *states)"}
        return write_package(step, plan, "module", o, out, source, check, None, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_module(sess, step: _ModuleStep, plan: Plan, o: ImportOptions, rows: int = 8) -> CheckReport:
    """ONNX Runtime (float32) against the module itself in float64, one step at a time from ORT's states."""
    rng = np.random.default_rng(o.seed)
    per_step = o.time == "per_step"
    frames = random_frames(rng, o.timesteps if per_step else 1, rows, plan.frame_shape, o.dtype, 1.0).astype(np.float32)
    if not per_step:
        frames = np.repeat(frames, o.timesteps, axis=0)
    o_ort, s_ort = ort_run(sess, frames, step.initial_values())
    ref = _ModuleStep(__import__("copy").deepcopy(step.net).double(), step.initial)
    max_o = max_s = 0.0
    bad = 0
    with torch.no_grad():
        prev = [torch.full((rows, *s), v, dtype=torch.float64) for s, v in zip([p[3] for p in plan.states], step.initial)]
        for t in range(o.timesteps):
            r = ref(torch.as_tensor(frames[t], dtype=torch.float64), *prev)
            d_o = float(np.abs(r[0].numpy() - o_ort[t]).max())
            d_s = max([float(np.abs(a.numpy() - s[t]).max()) for a, s in zip(r[1:], s_ort)] or [0.0])
            max_o, max_s = max(max_o, d_o), max(max_s, d_s)
            bad += int(d_o > 1e-4 or d_s > STATE_ATOL)
            prev = [torch.as_tensor(s[t], dtype=torch.float64) for s in s_ort]
    if bad:
        raise NirImportError(f"step.onnx differs from the module in float64 on {bad} of {o.timesteps} steps (max output "
                             f"diff {max_o:.3g}, max state diff {max_s:.3g}): the package is not written")
    return CheckReport(o.timesteps, rows, max_o, max_s, 0, float("nan"), 1.0, float((o_ort != 0).mean()))
