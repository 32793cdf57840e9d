#!/usr/bin/env python3
"""Framework reference data for the NIR importer tests (see tests/nir/README.md).

Run with the matching venv (tests/nir/setup_frameworks.sh creates them):
  .venv/bin/python        tests/nir/make_references.py --framework snntorch   (also writes `extra`)
  .venv-sinabs/bin/python tests/nir/make_references.py --framework sinabs
  .venv-norse/bin/python  tests/nir/make_references.py --framework norse

Each graph gets tests/nir/graphs/<name>/{graph.nir,input.npy,expected.npz,meta.json}.
expected.npz: `output` [T,N,*out] and `v:<node>` / `i:<node>` [T,N,*layer] membrane / synaptic
current after each step, in NIR scale. Nodes inside a subgraph are named `<graph>.<node>`.
"""
import argparse
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "graphs")
T, N = 12, 4


def rates(name, d):
    msg = []
    for k, v in d.items():
        msg.append(f"{k}={np.mean(np.asarray(v) != 0):.2f}")
    print(f"[{name}] spike rates: " + ", ".join(msg))


def save(name, graph_writer, x, out, states, meta, extra_arrays=None):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    graph_writer(os.path.join(d, "graph.nir"))
    np.save(os.path.join(d, "input.npy"), np.ascontiguousarray(x, dtype=np.float32))
    arrays = {"output": np.asarray(out, dtype=np.float32)}
    for k, v in states.items():
        arrays[k] = np.asarray(v, dtype=np.float32)
    for k, v in (extra_arrays or {}).items():
        arrays[k] = np.asarray(v, dtype=np.float32)
    for k, v in arrays.items():
        assert v.shape[:2] == (T, N), (name, k, v.shape)
    np.savez_compressed(os.path.join(d, "expected.npz"), **arrays)
    meta = dict(meta)
    meta.setdefault("timesteps", T)
    meta.setdefault("batch", N)
    meta["input_shape"] = list(x.shape)
    meta["output_shape"] = list(arrays["output"].shape)
    meta["arrays"] = sorted(arrays)
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"[{name}] wrote {d}  output rate {np.mean(arrays['output'] != 0):.2f}")


def node_types(graph, prefix=""):
    import nir

    types = set()
    for _k, n in graph.nodes.items():
        if isinstance(n, nir.NIRGraph):
            types |= node_types(n)
        else:
            types.add(type(n).__name__)
    return types


def has_cycle_edges(graph):
    import nir

    for _k, n in graph.nodes.items():
        if isinstance(n, nir.NIRGraph) and has_cycle_edges(n):
            return True
    set(graph.edges)
    # any directed cycle: simple DFS
    adj = {}
    for a, b in graph.edges:
        adj.setdefault(a, []).append(b)
    state = {}

    def dfs(u):
        state[u] = 1
        for v in adj.get(u, []):
            if state.get(v) == 1:
                return True
            if state.get(v) is None and dfs(v):
                return True
        state[u] = 2
        return False

    return any(state.get(u) is None and dfs(u) for u in list(adj)) or False


def sort_edges(graph):
    import nir

    graph.edges = sorted(graph.edges)
    for n in graph.nodes.values():
        if isinstance(n, nir.NIRGraph):
            sort_edges(n)
    return graph


# --------------------------------------------------------------------------------------------
# snnTorch
# --------------------------------------------------------------------------------------------
def run_snntorch():
    import nir
    import snntorch as snn
    import torch
    from snntorch.export_nir import export_to_nir
    from snntorch.import_nir import import_from_nir

    torch.manual_seed(1234)
    rng = np.random.default_rng(1234)
    base_meta = {"dialect": "snntorch", "framework": "snntorch", "framework_version": snn.__version__}
    dt = 1e-4
    ZR = dict(reset_mechanism="zero", reset_delay=False, init_hidden=False)

    def write_graph(g):
        return lambda p: nir.write(p, g)

    # ---------------- conv ----------------
    class ConvNet(torch.nn.Module):
        def __init__(s):
            super().__init__()
            s.conv = torch.nn.Conv2d(2, 4, 3, padding=1)
            s.lif1 = snn.Leaky(beta=torch.rand(4, 8, 8) * 0.5 + 0.4, threshold=torch.full((4, 8, 8), 0.8), **ZR)
            s.pool = torch.nn.AvgPool2d((2, 2))
            s.flat = torch.nn.Flatten()
            s.fc1 = torch.nn.Linear(64, 10, bias=False)
            s.syn = snn.Synaptic(alpha=torch.rand(10) * 0.5 + 0.3, beta=torch.rand(10) * 0.5 + 0.4,
                                 threshold=torch.full((10,), 1.0), **ZR)
            s.fc2 = torch.nn.Linear(10, 6)
            s.lif2 = snn.Leaky(beta=torch.rand(6) * 0.5 + 0.4, threshold=torch.full((6,), 0.4), **ZR)
            with torch.no_grad():
                s.conv.weight.mul_(2.0)
                s.fc1.weight.mul_(3.0)
                s.fc2.weight.mul_(4.0)
                s.fc2.bias.add_(0.2)

        def forward(s, x, st=None):
            st = {} if st is None else st
            z1, st["lif1"] = s.lif1(s.conv(x), st.get("lif1"))
            f = s.fc1(s.flat(s.pool(z1)))
            z2, st["syn_i"], st["syn"] = s.syn(f, st.get("syn_i"), st.get("syn"))
            z3, st["lif2"] = s.lif2(s.fc2(z2), st.get("lif2"))
            st["z1"], st["z2"] = z1, z2
            return z3

    net = ConvNet().eval()
    g = sort_edges(export_to_nir(net, torch.randn(1, 2, 8, 8), ignore_dims=[0]))
    d = os.path.join(OUT, "conv")
    os.makedirs(d, exist_ok=True)
    nir.write(os.path.join(d, "graph.nir"), g)
    x = (rng.random((T, N, 2, 8, 8)) * 1.5).astype(np.float32)
    # original module, batch of N
    orig = {"out": [], "lif1": [], "syn": [], "syn_i": [], "lif2": [], "z1": [], "z2": []}
    st = {}
    with torch.no_grad():
        for t in range(T):
            o = net(torch.from_numpy(x[t]), st)
            orig["out"].append(o.numpy())
            for k in ["lif1", "syn", "syn_i", "lif2", "z1", "z2"]:
                orig[k].append(st[k].numpy().copy())
    orig = {k: np.stack(v) for k, v in orig.items()}
    # snnTorch's own import of the written file; its Flatten(start_dim=0) flattens the batch,
    # so each sample is run alone (batch 1) through a fresh import.
    imp = {"out": [], "lif1": [], "syn": [], "syn_i": [], "lif2": []}
    for n in range(N):
        m = import_from_nir(nir.read(os.path.join(d, "graph.nir")))
        rec = {k: [] for k in imp}
        with torch.no_grad():
            for t in range(T):
                o, _ = m(torch.from_numpy(x[t, n : n + 1]))
                rec["out"].append(o.numpy().reshape(6))
                rec["lif1"].append(m.lif1.mem.numpy().reshape(4, 8, 8).copy())
                rec["syn_i"].append(m.syn.syn.numpy().reshape(10).copy())
                rec["syn"].append(m.syn.mem.numpy().reshape(10).copy())
                rec["lif2"].append(m.lif2.mem.numpy().reshape(6).copy())
        for k in imp:
            imp[k].append(np.stack(rec[k]))
    imp = {k: np.stack(v, axis=1) for k, v in imp.items()}
    diff = {k: float(np.abs(imp[k] - orig[k]).max()) for k in imp}
    print("[conv] import vs original max|diff|:", diff)
    rates("conv", {"lif1": orig["z1"], "syn": orig["z2"], "lif2": orig["out"]})
    # export writes r = tau/dt (LIF) and w_in = tau_syn/dt (CubaLIF): all input gains are 1,
    # so snnTorch's mem/syn are already in NIR scale.
    save("conv", lambda p: None, x, imp["out"],
         {"v:lif1": imp["lif1"], "i:syn": imp["syn_i"], "v:syn": imp["syn"], "v:lif2": imp["lif2"]},
         dict(base_meta, reference="import_from_nir", nodes=sorted(node_types(g)), recurrent=False,
              state_scale={"lif1": 1.0, "syn": 1.0, "lif2": 1.0},
              notes=("Exported with snntorch.export_nir.export_to_nir (edges sorted) from Conv2d, Leaky, "
                     "AvgPool2d((2,2)), Flatten, Linear(bias=False), Synaptic, Linear, Leaky with per-neuron beta/"
                     "alpha, per-layer-uniform threshold (import needs one threshold per layer), reset_mechanism="
                     "'zero', reset_delay=False. Reference = snntorch.import_from_nir(nir.read(graph.nir)) stepped "
                     "one call per step; its Flatten(start_dim=0) flattens the batch, so each sample ran alone "
                     "(batch 1) through a fresh import. Input gains r*dt/tau and w_in*dt/tau_syn are 1 (export "
                     f"writes r=tau/dt, w_in=tau_syn/dt), so v/i are NIR scale. Original module (batch 4) "
                     f"agrees: max|diff| {diff}.")))

    # ---------------- rleaky ----------------
    class RNet(torch.nn.Module):
        def __init__(s):
            super().__init__()
            s.fc1 = torch.nn.Linear(8, 12)
            s.rl = snn.RLeaky(beta=torch.rand(12) * 0.5 + 0.4, threshold=torch.full((12,), 0.9),
                              all_to_all=True, linear_features=12, **ZR)
            s.fc2 = torch.nn.Linear(12, 5)
            s.lif = snn.Leaky(beta=torch.rand(5) * 0.5 + 0.4, threshold=torch.full((5,), 0.8), **ZR)
            with torch.no_grad():
                s.fc1.weight.mul_(2.0)
                s.rl.recurrent.weight.mul_(1.5)
                s.rl.recurrent.bias.copy_(torch.rand(12) * 0.3 - 0.1)
                s.fc2.weight.mul_(2.0)

        def forward(s, x, st=None):
            st = {} if st is None else st
            z1, st["rl"] = s.rl(s.fc1(x), st.get("z1"), st.get("rl"))
            z2, st["lif"] = s.lif(s.fc2(z1), st.get("lif"))
            st["z1"] = z1
            return z2

    def try_import(g, name):
        try:
            m = import_from_nir(g)
            return f"snntorch import_from_nir succeeded ({type(m).__name__}) but was not used"
        except Exception as e:  # record the framework's own error
            return f"snntorch import_from_nir fails on {name}: {type(e).__name__}: {e}"

    def run_orig(net, x, keys):
        st, rec = {}, {k: [] for k in ["out"] + keys}
        with torch.no_grad():
            for t in range(T):
                rec["out"].append(net(torch.from_numpy(x[t]), st).numpy())
                for k in keys:
                    rec[k].append(st[k].numpy().copy())
        return {k: np.stack(v) for k, v in rec.items()}

    rnet = RNet().eval()
    g = sort_edges(export_to_nir(rnet, torch.randn(1, 8), ignore_dims=[0]))
    d = os.path.join(OUT, "rleaky")
    os.makedirs(d, exist_ok=True)
    nir.write(os.path.join(d, "graph.nir"), g)
    err = try_import(nir.read(os.path.join(d, "graph.nir")), "rleaky")
    print("[rleaky]", err)
    x = (rng.random((T, N, 8)) * 2.5).astype(np.float32)
    r = run_orig(rnet, x, ["rl", "lif", "z1"])
    rates("rleaky", {"rl": r["z1"], "lif": r["out"]})
    save("rleaky", lambda p: None, x, r["out"], {"v:rl.lif": r["rl"], "v:lif": r["lif"]},
         dict(base_meta, reference="original module", nodes=sorted(node_types(g)), recurrent=True,
              state_scale={"rl.lif": 1.0, "lif": 1.0},
              notes=("Exported with export_to_nir from Linear -> RLeaky(all_to_all, linear_features=12, recurrent "
                     "Linear with bias, per-neuron beta, one threshold 0.9 so that import_from_nir gets past its threshold check) "
                     "-> Linear -> Leaky; RLeaky "
                     "becomes the subgraph node 'rl' {input, lif, w_rec (Affine), output} with edges lif->w_rec->"
                     "lif. Reference = the ORIGINAL snnTorch module (init_hidden=False, reset zero, "
                     "reset_delay=False), batch 4. FRAMEWORK FACT: snn.RLeaky computes "
                     "mem = beta*mem + I + recurrent(spk_prev) with spk_prev = 0 at t=0, so the recurrent "
                     "Affine's BIAS IS ADDED AT t=0 (recurrent(0) = bias). " + err)))

    # ---------------- rsynaptic ----------------
    class RSNet(torch.nn.Module):
        def __init__(s, dialect):
            super().__init__()
            s.dialect = dialect
            s.fc1 = torch.nn.Linear(8, 10)
            s.rs = snn.RSynaptic(alpha=torch.rand(10) * 0.4 + 0.4, beta=torch.rand(10) * 0.4 + 0.5,
                                 threshold=torch.rand(10) * 0.5 + 1.0, all_to_all=False,
                                 V=torch.randn(10) * 0.4, **ZR)
            s.fc2 = torch.nn.Linear(10, 5)
            s.lif = snn.Leaky(beta=torch.rand(5) * 0.5 + 0.4, threshold=torch.rand(5) * 0.4 + 0.6, **ZR)
            with torch.no_grad():
                s.fc1.weight.mul_(1.5)
                s.fc2.weight.mul_(2.0)

        def forward(s, x, st=None):
            st = {} if st is None else st
            cur = s.fc1(x)
            if s.dialect:
                # snn.Synaptic (same-step zero reset) + the recurrent diagonal weight applied to the
                # previous step's spikes: the graph's semantics under the snnTorch dialect.
                if not hasattr(s, "syn"):
                    s.syn = snn.Synaptic(alpha=s.rs.alpha, beta=s.rs.beta, threshold=s.rs.threshold, **ZR)
                prev = st.get("z1", torch.zeros_like(cur))
                z1, st["rs_i"], st["rs"] = s.syn(cur + prev * s.rs.recurrent.V, st.get("rs_i"), st.get("rs"))
            else:
                zc = torch.zeros_like(cur)  # RSynaptic(reset_delay=False) fails on None spk/mem arguments
                z1, st["rs_i"], st["rs"] = s.rs(cur, st.get("z1", zc), st.get("rs_i", zc), st.get("rs", zc))
            # An explicit zero membrane at t = 0: with mem=None snn.Leaky reuses its own last membrane,
            # which the first of the two runs below leaves behind.
            z2, st["lif"] = s.lif(s.fc2(z1), st.get("lif", torch.zeros(z1.shape[0], 5)))
            st["z1"] = z1
            return z2

    rsnet = RSNet(dialect=False).eval()
    g = sort_edges(export_to_nir(rsnet, torch.randn(1, 8), ignore_dims=[0]))
    d = os.path.join(OUT, "rsynaptic")
    os.makedirs(d, exist_ok=True)
    nir.write(os.path.join(d, "graph.nir"), g)
    err = try_import(nir.read(os.path.join(d, "graph.nir")), "rsynaptic")
    print("[rsynaptic]", err)
    x = (rng.random((T, N, 8)) * 1.5).astype(np.float32)
    # RSynaptic needs spk passed explicitly at t=0 when reset_delay=False (None / factor fails)
    st0 = {"z1": torch.zeros(N, 10)}
    ro = {k: [] for k in ["out", "rs", "rs_i", "lif", "z1"]}
    with torch.no_grad():
        st = dict(st0)
        for t in range(T):
            ro["out"].append(rsnet(torch.from_numpy(x[t]), st).numpy())
            for k in ["rs", "rs_i", "lif", "z1"]:
                ro[k].append(st[k].numpy().copy())
    ro = {k: np.stack(v) for k, v in ro.items()}
    rsnet.dialect = True
    rd = run_orig(rsnet, x, ["rs", "rs_i", "lif", "z1"])
    rates("rsynaptic", {"rs": rd["z1"], "lif": rd["out"], "rs(RSynaptic)": ro["z1"]})
    nd = int(np.sum(rd["z1"] != ro["z1"]))
    save("rsynaptic", lambda p: None, x, rd["out"],
         {"v:rs.lif": rd["rs"], "i:rs.lif": rd["rs_i"], "v:lif": rd["lif"]},
         dict(base_meta, reference="snntorch modules: snn.Synaptic + recurrent diagonal weight (V) on the previous "
              "step's spikes; original snn.RSynaptic output stored as original:*", nodes=sorted(node_types(g)),
              recurrent=True, state_scale={"rs.lif": 1.0, "lif": 1.0},
              notes=("Exported with export_to_nir from Linear -> RSynaptic(all_to_all=False, V per neuron -> "
                     "recurrent nir.Linear diag(V), per-neuron alpha/beta/threshold) -> Linear -> Leaky. "
                     "FRAMEWORK FACT (snnTorch 1.0.0 bug): snn.RSynaptic.forward with reset_delay=False computes "
                     "the same-step reset into LOCAL variables (`mem = mem - do_reset*mem`, using the spk/mem "
                     "ARGUMENTS) and returns self.mem unreset, so the only reset left is the delayed _base_zero: "
                     "a neuron whose v > threshold keeps v for that step and gets v = 0 (that step's input lost) "
                     "at the next step; it cannot spike on two consecutive steps. With spk=None or mem=None it raises "
                     "TypeError (None / graded_spikes_factor, Tensor * None), so zeros are passed at t=0. import_from_nir would map "
                     "this subgraph to that "
                     "same RSynaptic(reset_delay=False). `output`, `v:*`, `i:*` are therefore computed with "
                     "snn.Synaptic (same alpha/beta/threshold, zero reset, reset_delay=False) fed "
                     "I + V*spk_prev (spk_prev = 0 at t=0; w_rec is Linear, no bias): the snnTorch-dialect "
                     "semantics. The ORIGINAL RSynaptic's results are `original:output`, `original:v:rs.lif`, "
                     f"`original:i:rs.lif` ({nd} of {rd['z1'].size} hidden spikes differ). " + err)),
         extra_arrays={"original:output": ro["out"], "original:v:rs.lif": ro["rs"], "original:i:rs.lif": ro["rs_i"]})

    # ---------------- fanin (hand-built, gain != 1) ----------------
    rs = np.random.default_rng(7)
    Wa, ba = (rs.normal(0, 0.6, (8, 6))).astype(np.float32), (rs.normal(0, 0.1, 8)).astype(np.float32)
    Wb, bb = (rs.normal(0, 0.6, (8, 6))).astype(np.float32), (rs.normal(0, 0.1, 8)).astype(np.float32)
    Wc, bc = (rs.normal(0, 0.8, (4, 8))).astype(np.float32), (rs.normal(0, 0.1, 4)).astype(np.float32)
    beta1 = (rs.random(8) * 0.5 + 0.4).astype(np.float32)
    beta2 = (rs.random(4) * 0.5 + 0.4).astype(np.float32)
    tau1, tau2 = (dt / (1 - beta1)).astype(np.float32), (dt / (1 - beta2)).astype(np.float32)
    gain1, gain2 = 2.0, 1.0  # r*dt/tau
    thr1, thr2 = 1.2, 0.5
    g = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type=np.array([6])),
            "fc_a": nir.Affine(weight=Wa, bias=ba),
            "fc_b": nir.Affine(weight=Wb, bias=bb),
            "lif1": nir.LIF(tau=tau1, r=(gain1 * tau1 / dt).astype(np.float32), v_leak=np.zeros(8, np.float32),
                            v_threshold=np.full(8, thr1, np.float32), v_reset=np.zeros(8, np.float32)),
            "fc_c": nir.Affine(weight=Wc, bias=bc),
            "lif2": nir.LIF(tau=tau2, r=(gain2 * tau2 / dt).astype(np.float32), v_leak=np.zeros(4, np.float32),
                            v_threshold=np.full(4, thr2, np.float32), v_reset=np.zeros(4, np.float32)),
            "output": nir.Output(output_type=np.array([4])),
        },
        edges=sorted([("input", "fc_a"), ("input", "fc_b"), ("fc_a", "lif1"), ("fc_b", "lif1"),
                      ("lif1", "fc_c"), ("fc_c", "lif2"), ("lif2", "output")]),
    )
    d = os.path.join(OUT, "fanin")
    os.makedirs(d, exist_ok=True)
    nir.write(os.path.join(d, "graph.nir"), g)
    x = (rng.random((T, N, 6)) * 1.0).astype(np.float32)
    gr = nir.read(os.path.join(d, "graph.nir"))
    m = import_from_nir(gr)
    rec = {k: [] for k in ["out", "lif1", "lif2"]}
    with torch.no_grad():
        for t in range(T):
            o, _ = m(torch.from_numpy(x[t]))
            rec["out"].append(o.numpy())
            rec["lif1"].append(m.lif1.mem.numpy().copy())
            rec["lif2"].append(m.lif2.mem.numpy().copy())
    imp = {k: np.stack(v) for k, v in rec.items()}
    # plain torch re-implementation with snn.Leaky: the two currents summed, times the gain
    l1 = snn.Leaky(beta=torch.from_numpy(beta1), threshold=thr1, **ZR)
    l2 = snn.Leaky(beta=torch.from_numpy(beta2), threshold=thr2, **ZR)
    m1 = m2 = None
    ref = {k: [] for k in ["out", "lif1", "lif2", "z1"]}
    with torch.no_grad():
        for t in range(T):
            xt = torch.from_numpy(x[t])
            cur = gain1 * (xt @ torch.from_numpy(Wa).T + torch.from_numpy(ba) + xt @ torch.from_numpy(Wb).T
                           + torch.from_numpy(bb))
            z1, m1 = l1(cur, m1)
            z2, m2 = l2(gain2 * (z1 @ torch.from_numpy(Wc).T + torch.from_numpy(bc)), m2)
            ref["out"].append(z2.numpy())
            ref["lif1"].append(m1.numpy().copy())
            ref["lif2"].append(m2.numpy().copy())
            ref["z1"].append(z1.numpy())
    ref = {k: np.stack(v) for k, v in ref.items()}
    dv1 = float(np.abs(imp["lif1"] * gain1 - ref["lif1"]).max())
    dz = int(np.sum(imp["out"] != ref["out"]))
    print(f"[fanin] import*gain vs plain re-implementation: max|dv1| {dv1}, output diffs {dz}")
    rates("fanin", {"lif1": ref["z1"], "lif2": ref["out"]})
    save("fanin", lambda p: None, x, imp["out"],
         {"v:lif1": imp["lif1"] * gain1, "v:lif2": imp["lif2"] * gain2},
         dict(base_meta, reference="import_from_nir", nodes=sorted(node_types(g)), recurrent=False,
              state_scale={"lif1": gain1, "lif2": gain2},
              notes=("Hand-built with nir (two Affine branches from the input into one LIF: fan-in, summed). "
                     f"lif1 has r = {gain1}*tau/dt, so its input gain r*dt/tau = {gain1}; snnTorch's import keeps "
                     f"the input unscaled and divides the threshold by the gain, so its mem is v/{gain1}: v:lif1 "
                     f"= mem*{gain1} (NIR scale). Reference = snntorch.import_from_nir of the file (nirtorch sums "
                     f"the two edges), batch 4, one call per step. Cross-check: plain torch with snn.Leaky on "
                     f"gain*(I_a+I_b): max|dv| {dv1}, {dz} output differences.")))

    # ---------------- extra (numpy, not a framework) ----------------
    make_extra(nir, dt)


def make_extra(nir, dt):
    rs = np.random.default_rng(99)
    n_in, n_h = 6, 5
    s = (rs.random(n_in) * 1.5 + 0.5).astype(np.float32)
    thr0 = (rs.random(n_in) * 0.6 + 0.4).astype(np.float32)
    Wl = rs.normal(0, 0.8, (n_h, n_in)).astype(np.float32)
    Wa, ba = rs.normal(0, 0.5, (n_h, n_in)).astype(np.float32), rs.normal(0, 0.1, n_h).astype(np.float32)
    r_int = (rs.random(n_h) * 0.2 + 0.05).astype(np.float32)
    beta = (rs.random(n_h) * 0.5 + 0.4).astype(np.float32)
    tau = (dt / (1 - beta)).astype(np.float32)
    r = (tau / dt * 0.8).astype(np.float32)  # gain 0.8
    vth = (rs.random(n_h) * 0.6 + 0.8).astype(np.float32)
    g = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type=np.array([n_in])),
            "scale": nir.Scale(scale=s),
            "thr": nir.Threshold(threshold=thr0),
            "lin": nir.Linear(weight=Wl),
            "aff": nir.Affine(weight=Wa, bias=ba),
            "integ": nir.I(r=r_int),  # NIR Integrator (class nir.I, type "I" in the file)
            "lif": nir.LIF(tau=tau, r=r, v_leak=np.zeros(n_h, np.float32), v_threshold=vth,
                           v_reset=np.zeros(n_h, np.float32)),
            "output": nir.Output(output_type=np.array([n_h])),
        },
        edges=sorted([("input", "scale"), ("scale", "thr"), ("thr", "lin"), ("lin", "lif"),
                      ("input", "aff"), ("aff", "integ"), ("integ", "lif"), ("lif", "output")]),
    )
    x = np.random.default_rng(5).normal(0.2, 0.5, (T, N, n_in)).astype(np.float32)
    v_int = np.zeros((N, n_h), np.float32)
    v = np.zeros((N, n_h), np.float32)
    outs, vi, vl, zt = [], [], [], []
    a = (1 - dt / tau).astype(np.float32)
    gain = (r * dt / tau).astype(np.float32)
    for t in range(T):
        z0 = ((s * x[t]) > thr0).astype(np.float32)          # Scale, then Threshold (strict >)
        v_int = v_int + r_int * (x[t] @ Wa.T + ba)             # Integrator: v += r*x per step
        cur = z0 @ Wl.T + v_int                                # fan-in: Linear + Integrator output
        v = a * v + gain * cur                                 # LIF, snnTorch dialect, dt = 1e-4
        z = (v > vth).astype(np.float32)
        v = np.where(z > 0, 0.0, v).astype(np.float32)         # reset to 0 in the same step
        outs.append(z)
        vi.append(v_int.copy())
        vl.append(v.copy())
        zt.append(z0)
    rates("extra", {"thr": np.stack(zt), "lif": np.stack(outs)})
    save("extra", lambda p: nir.write(p, g), x, np.stack(outs), {"v:integ": np.stack(vi), "v:lif": np.stack(vl)},
         {"dialect": "snntorch", "framework": "numpy (not a framework)", "framework_version": np.__version__,
          "reference": "numpy simulation of the NIR equations (NOT a framework output)",
          "nodes": sorted(node_types(g)), "recurrent": False, "state_scale": {"lif": 1.0, "integ": 1.0},
          "notes": ("Hand-built with nir; no framework imports Scale, Threshold or Integrator. Reference is a "
                    "numpy simulation in make_references.py under the snnTorch dialect, per step: Scale y = s*x; "
                    "Threshold z = (x > theta); Integrator v += r*x (no dt, output v); the LIF sums its two "
                    "inputs (Linear of the threshold spikes + Integrator output), v = (1-dt/tau) v + "
                    "(r dt/tau) I with dt = 1e-4 (gain 0.8 here), spike v > v_threshold, v = 0 on a spike. "
                    "v:integ is the Integrator state after each step, v:lif the LIF membrane after reset.")})


def _step_graph(model, x, names, getter):
    """Step a nirtorch-loaded model one call per time step; return outputs and per-step states."""
    import torch

    mods = dict(model.named_modules())
    def find(n):
        for k in (n, n.replace(".", "_"), "stored_modules." + n):
            if k in mods:
                return mods[k]
        raise KeyError(f"{n} not in {list(mods)}")
    outs, rec, state = [], {n: [] for n in names}, None
    with torch.no_grad():
        for t in range(x.shape[0]):
            res = model(torch.from_numpy(x[t])) if state is None else model(torch.from_numpy(x[t]), state)
            if isinstance(res, tuple):
                o, state = res
            else:
                o = res
            outs.append(o.detach().numpy().copy())
            for n in names:
                rec[n].append(getter(find(n), state, n))
    return np.stack(outs), {k: np.stack(v) for k, v in rec.items()}


def run_sinabs():
    import nir
    import sinabs
    import torch
    from sinabs import from_nir

    rng = np.random.default_rng(2024)
    rs = np.random.default_rng(11)
    base = {"dialect": "sinabs", "framework": "sinabs", "framework_version": sinabs.__version__,
            "reference": "from_nir"}
    def f32(a):
        return np.asarray(a, np.float32)

    def v_of(mod, state, n):
        return mod.v_mem.detach().numpy().copy()

    # ---------------- cnn ----------------
    g = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type=np.array([2, 8, 8])),
            "conv": nir.Conv2d(input_shape=(8, 8), weight=f32(rs.normal(0, 0.5, (4, 2, 3, 3))), stride=1, padding=1,
                               dilation=1, groups=1, bias=f32(rs.normal(0, 0.1, 4))),
            "iaf": nir.IF(r=np.ones((4, 8, 8), np.float32), v_threshold=np.full((4, 8, 8), 1.0, np.float32)),
            "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
            "flat": nir.Flatten(input_type={"input": np.array([4, 4, 4])}, start_dim=0, end_dim=-1),
            "fc": nir.Affine(weight=f32(rs.normal(0, 0.25, (6, 64))), bias=f32(rs.normal(0, 0.1, 6))),
            "lif": nir.LIF(tau=f32(rs.random(6) * 8 + 2), r=np.ones(6, np.float32), v_leak=np.zeros(6, np.float32),
                           v_threshold=f32(rs.random(6) * 0.5 + 0.8)),
            "output": nir.Output(output_type=np.array([6])),
        },
        edges=sorted([("input", "conv"), ("conv", "iaf"), ("iaf", "pool"), ("pool", "flat"), ("flat", "fc"),
                      ("fc", "lif"), ("lif", "output")]))
    graphs = {"cnn": (g, (rng.random((T, N, 2, 8, 8)) * 1.2).astype(np.float32), ["iaf", "lif"]), }
    # ---------------- conv1d-li ----------------
    g2 = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type=np.array([3, 10])),
            "conv": nir.Conv1d(input_shape=10, weight=f32(rs.normal(0, 0.6, (4, 3, 3))), stride=1, padding=1,
                               dilation=1, groups=1, bias=f32(rs.normal(0, 0.1, 4))),
            "iaf": nir.IF(r=np.ones((4, 10), np.float32), v_threshold=f32(rs.random((4, 10)) * 0.5 + 0.75)),
            "flat": nir.Flatten(input_type={"input": np.array([4, 10])}, start_dim=0, end_dim=-1),
            "fc": nir.Affine(weight=f32(rs.normal(0, 0.3, (5, 40))), bias=f32(rs.normal(0, 0.1, 5))),
            "li": nir.LI(tau=f32(rs.random(5) * 6 + 2), r=np.ones(5, np.float32), v_leak=np.zeros(5, np.float32)),
            "output": nir.Output(output_type=np.array([5])),
        },
        edges=sorted([("input", "conv"), ("conv", "iaf"), ("iaf", "flat"), ("flat", "fc"), ("fc", "li"),
                      ("li", "output")]))
    graphs["conv1d-li"] = (g2, (rng.random((T, N, 3, 10)) * 1.5).astype(np.float32), ["iaf", "li"])
    for name, (g, x, layers) in graphs.items():
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        nir.write(os.path.join(d, "graph.nir"), g)
        gr = nir.read(os.path.join(d, "graph.nir"))
        for n in gr.nodes.values():
            if isinstance(n, nir.Conv1d):
                # sinabs 3.1.3's Conv1d import calls node.weight.detach(): it only takes torch tensors
                # (what its own to_nir holds in memory), not the numpy arrays nir.read returns.
                n.weight, n.bias = torch.from_numpy(n.weight), torch.from_numpy(n.bias)
        model = from_nir(gr, batch_size=N, num_timesteps=1)
        model = model.float()  # its Conv1d import casts weights to float64 (.to(float))
        out, st = _step_graph(model, x, layers, v_of)
        rates(name, {"output": out})
        save(name, lambda p: None, x, out, {f"v:{k}": v for k, v in st.items()},
             dict(base, nodes=sorted(node_types(g)), recurrent=False, state_scale={k: 1.0 for k in layers},
                  notes=("Hand-built with nir " + nir.__version__ + " (sinabs 3.1.3 pins nir<=1.0.4; files have no "
                         "v_reset). Reference = sinabs.from_nir(nir.read(graph.nir), batch_size=4, num_timesteps=1), "
                         "called once per step (sinabs layers keep their state between calls); v = layer.v_mem after "
                         "each step. Sinabs semantics: tau in steps, v = exp(-1/tau) v + I (r ignored, no input "
                         "normalisation), IF -> IAFSqueeze (MultiSpike: n = floor(v/θ) spikes, subtract n·θ, "
                         "min_v_mem = -θ), LIF -> LIFSqueeze (MultiSpike, subtract), LI -> ExpLeakSqueeze "
                         "(output = v), SumPool2d -> sl.SumPool2d, Flatten dims shifted by +1 for the batch.")))


def run_norse():
    import nir
    import torch
    from norse.torch import from_nir

    rng = np.random.default_rng(77)
    rs = np.random.default_rng(13)
    try:
        from importlib.metadata import version
        nver = version("norse")
    except Exception:
        nver = "1.1.0"
    base = {"dialect": "norse", "framework": "norse", "framework_version": nver, "reference": "from_nir"}
    def f32(a):
        return np.asarray(a, np.float32)

    def getter(mod, state, n):
        return None

    def run(g, x, statepaths):
        if any(isinstance(n, nir.Flatten) for n in g.nodes.values()):
            # norse maps nir.Flatten to torch.nn.Flatten(start_dim, end_dim) unshifted, so NIR's
            # Flatten(start_dim=0) flattens the batch too: run each sample alone (batch 1).
            res = [run1(g, x[:, n : n + 1], statepaths) for n in range(x.shape[1])]
            out = np.stack([r[0].reshape(x.shape[0], -1) for r in res], 1)
            st = {k: np.stack([r[1][k].reshape((x.shape[0],) + r[1][k].shape[1:]).reshape(
                x.shape[0], *([-1] if r[1][k][0].ndim == 1 else r[1][k].shape[2:])) for r in res], 1)
                for k in statepaths}
            return out, st
        return run1(g, x, statepaths)

    def run1(g, x, statepaths):
        """statepaths: {key: fn(state_dict) -> tensor}"""
        model = from_nir(g)  # default dt = 1e-3
        outs, rec, state = [], {k: [] for k in statepaths}, None
        with torch.no_grad():
            for t in range(x.shape[0]):
                o, state = model(torch.from_numpy(x[t]), state)
                outs.append(o.numpy().copy())
                for k, fn in statepaths.items():
                    rec[k].append(fn(state.state).detach().numpy().copy())
        return np.stack(outs), {k: np.stack(v) for k, v in rec.items()}

    # ---------------- lif-cuba ----------------
    g = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type=np.array([6])),
            "fc1": nir.Affine(weight=f32(rs.normal(0, 1.0, (8, 6))), bias=f32(rs.normal(0.3, 0.2, 8))),
            "lif": nir.LIF(tau=f32(rs.random(8) * 5e-3 + 3e-3), r=np.ones(8, np.float32), v_leak=f32(rs.random(8) * 0.2),
                           v_threshold=f32(rs.random(8) * 0.3 + 0.3), v_reset=np.zeros(8, np.float32)),
            "fc2": nir.Affine(weight=f32(rs.normal(0, 1.5, (6, 8))), bias=f32(rs.normal(0.2, 0.2, 6))),
            "cuba": nir.CubaLIF(tau_syn=f32(rs.random(6) * 4e-3 + 2e-3), tau_mem=f32(rs.random(6) * 5e-3 + 3e-3),
                                r=f32(rs.random(6) * 1.0 + 1.0), v_leak=np.zeros(6, np.float32),
                                v_threshold=f32(rs.random(6) * 0.05 + 0.05), w_in=f32(rs.random(6) * 2 + 4),
                                v_reset=np.zeros(6, np.float32)),
            "fc3": nir.Affine(weight=f32(rs.normal(0.3, 1.0, (4, 6))), bias=f32(rs.normal(0.1, 0.1, 4))),
            "iaf": nir.IF(r=np.ones(4, np.float32), v_threshold=f32(rs.random(4) * 0.5 + 0.5), v_reset=np.zeros(4, np.float32)),
            "output": nir.Output(output_type=np.array([4])),
        },
        edges=sorted([("input", "fc1"), ("fc1", "lif"), ("lif", "fc2"), ("fc2", "cuba"), ("cuba", "fc3"),
                      ("fc3", "iaf"), ("iaf", "output")]))
    x = (rng.random((T, N, 6)) * 40).astype(np.float32)
    paths = {"v:lif": lambda s: s["lif"][0].v, "i:cuba": lambda s: s["cuba"][0][0].v,
             "v:cuba": lambda s: s["cuba"][0][1].v, "v:iaf": lambda s: s["iaf"][0].v}
    graphs = {"lif-cuba": (g, x, paths)}
    # ---------------- conv ----------------
    g2 = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type=np.array([2, 8, 8])),
            "conv": nir.Conv2d(input_shape=(8, 8), weight=f32(rs.normal(0, 0.5, (3, 2, 3, 3))), stride=1, padding=1,
                               dilation=1, groups=1, bias=f32(rs.normal(0.1, 0.1, 3))),
            "lif1": nir.LIF(tau=np.full((3, 8, 8), 5e-3, np.float32), r=np.ones((3, 8, 8), np.float32),
                            v_leak=np.zeros((3, 8, 8), np.float32), v_threshold=np.full((3, 8, 8), 0.1, np.float32),
                            v_reset=np.zeros((3, 8, 8), np.float32)),
            "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
            "flat": nir.Flatten(input_type={"input": np.array([3, 4, 4])}, start_dim=0, end_dim=-1),
            "fc": nir.Linear(weight=f32(rs.normal(0.5, 4.0, (5, 48)))),
            "lif2": nir.LIF(tau=f32(rs.random(5) * 4e-3 + 3e-3), r=np.ones(5, np.float32), v_leak=np.zeros(5, np.float32),
                            v_threshold=f32(rs.random(5) * 0.1 + 0.1), v_reset=np.zeros(5, np.float32)),
            "output": nir.Output(output_type=np.array([5])),
        },
        edges=sorted([("input", "conv"), ("conv", "lif1"), ("lif1", "pool"), ("pool", "flat"), ("flat", "fc"),
                      ("fc", "lif2"), ("lif2", "output")]))
    x2 = (rng.random((T, N, 2, 8, 8)) * 30).astype(np.float32)
    graphs["norse-conv"] = (g2, x2, {"v:lif1": lambda s: s["lif1"][0].v, "v:lif2": lambda s: s["lif2"][0].v})
    for name, (g, x, paths) in graphs.items():
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        nir.write(os.path.join(d, "graph.nir"), g)
        out, st = run(nir.read(os.path.join(d, "graph.nir")), x, paths)
        rates(name, {"output": out})
        save(name, lambda p: None, x, out, st,
             dict(base, nodes=sorted(node_types(g)), recurrent=False, state_scale={k.split(":")[1]: 1.0 for k in paths},
                  notes=NORSE_NOTES.get(name, "") + " Hand-built with nir " + nir.__version__ + "; reference = "
                  "norse.torch.from_nir(nir.read(graph.nir)) with its default dt = 1e-3, one call per step, state "
                  "passed back in; v/i read from the returned state (LIFBoxFeedForwardState.v, CubaLIF state = "
                  "(LIBox state .v = synaptic current i, LIFBox state .v))."))


NORSE_NOTES = {
    "norse-conv": ("norse maps nir.Flatten to torch.nn.Flatten(start_dim, end_dim) without shifting for the "
                   "batch, so the NIR-correct Flatten(start_dim=0) flattens the batch: each sample ran alone "
                   "(batch 1) and the results were stacked. SumPool2d -> LPPool2d(norm 1) = plain sum for "
                   "non-negative spikes. Linear -> torch Linear without bias."),
    "lif-cuba": ("LIF has v_leak != 0 (norse LIFBox: v += dt/tau (v_leak - v + I), v starts at v_leak, r "
                 "ignored); CubaLIF: i += dt/tau_syn (v_leak - i + w_in I), then v += dt/tau_mem (v_leak - v + r i) "
                 "with the new i; IF -> IAFCell: v += I (no dt, r ignored), v starts at 0; spikes v > v_th, v -> 0 (NIR v_reset ignored)."),
}

FRAMEWORKS = {"snntorch": run_snntorch, "sinabs": run_sinabs, "norse": run_norse}

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--framework", required=True, choices=["snntorch", "sinabs", "norse"])
    a = ap.parse_args()
    FRAMEWORKS[a.framework]()
