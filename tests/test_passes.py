"""The pass infrastructure, ``canonicalize`` and ``lift-snu``.

Graphs are built with the ``Graph`` API in the many spellings an exporter may use. Each
test checks the structure after the passes (the exact ``snu.layer`` nodes, their g, h,
decay and bias, no leftovers) and, through the reference interpreter, that the graph
computes the same before and after over T = 20 steps: identical spikes, other values
within 1e-5.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import FrozenInstanceError, dataclass, fields, is_dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from snuc.ir import REGISTRY, Graph, Loc, SnucError, TensorType, VerifyError
from snuc.passes import (
    DEFAULT_PIPELINE,
    PASSES,
    Canonicalize,
    DeadCode,
    LiftSNU,
    Match,
    Pass,
    Verify,
    default_pipeline,
    get_pass,
    match_snu,
    pass_names,
    run_pipeline,
)
from snuc.passes.canonicalize import (
    match_double_negation,
    match_identity,
    match_spike,
    match_sub_constant,
)

F, N, N2, B, T = 4, 6, 5, 3, 20
GOLDEN = Path(__file__).parent / "golden" / "passes"


# --------------------------------------------------------------------------- building graphs


class Net:
    """A step graph under construction; node locs are ``onnx:/<scope>/<op>``."""

    def __init__(self, name: str = "net", input_shape: tuple = ("B", F), seed: int = 0) -> None:
        self.g = Graph(name)
        self.rng = np.random.default_rng(seed)
        self.scope = name
        self.x = self.g.add_input("x", TensorType("f32", input_shape))

    def const(self, hint: str, value: object) -> str:
        return self.g.add_constant(self.g.fresh(hint), np.asarray(value, np.float32))

    def state(self, hint: str, size: int) -> str:
        return self.g.add_state(self.g.fresh(hint), TensorType("f32", ("B", size)))

    def op(self, name: str, *operands: str, **attrs: object) -> str:
        loc = Loc(f"onnx:/{self.scope}/{name.split('.')[-1]}")
        (out,) = self.g.add_node(REGISTRY[name](**attrs), operands, loc=loc)
        return out


@dataclass
class Layer:
    """Names of one built SNU layer's values."""

    s: str
    y: str
    s_prev: str
    y_prev: str
    pre: str


# How the product l * s * (1 - y) is associated and ordered (m = dig.mul, d = l).
PRODUCTS = {
    "(l*s)*r": lambda m, d, s, r: m(m(d, s), r),
    "l*(s*r)": lambda m, d, s, r: m(d, m(s, r)),
    "(s*r)*l": lambda m, d, s, r: m(m(s, r), d),
    "r*(l*s)": lambda m, d, s, r: m(r, m(d, s)),
    "s*(r*l)": lambda m, d, s, r: m(s, m(r, d)),
    "(r*s)*l": lambda m, d, s, r: m(m(r, s), d),
}

# How the sum of the terms of a (t) and the product p is associated (a = dig.add).
SUMS = {
    "a+p": lambda a, t, p: a(_fold(a, t), p),
    "p+a": lambda a, t, p: a(p, _fold(a, t)),
    "a0+(p+rest)": lambda a, t, p: a(t[0], a(p, _fold(a, t[1:]))),
    "(a0+p)+rest": lambda a, t, p: a(a(t[0], p), _fold(a, t[1:])),
    "rest+(p+a0)": lambda a, t, p: a(_fold(a, t[1:]), a(p, t[0])),
}


def _fold(add, terms):
    total = terms[0]
    for t in terms[1:]:
        total = add(total, t)
    return total


def snu(
    net: Net,
    x: str,
    n_in: int,
    n: int = N,
    *,
    name: str = "snu1",
    spike: str = "cast",
    product: str = "(l*s)*r",
    reset: str = "sub",
    total: str = "a+p",
    g: str = "relu",
    decay: object = 0.8,
    bias: object = -0.5,
    recurrent: bool = False,
    input_bias: bool = False,
    decay_op: str | None = None,
    reset_state: str | None = None,
) -> Layer:
    """Add one SNU layer reading ``x``, spelled as the keyword arguments say.

    ``spike`` is how ``y = h(s + b)`` is written: ``cast`` cast(greater(s + b, 0)),
    ``where`` where(greater(s + b, 0), 1, 0), ``less`` cast(less(0, s + b)), ``bias-first``
    cast(greater(b + s, 0)), ``threshold`` cast(greater(s, -b)), ``sub-threshold``
    cast(greater(s - (-b), 0)), ``ge`` cast(greater_equal(s + b, 0)), ``sigmoid``
    sigmoid(s + b); with ``bias=None``, ``cast`` is cast(greater(s, 0)).
    """
    net.scope = name
    w = net.const(f"{name}_W", net.rng.normal(0, 1.0, (n_in, n)))
    s_prev, y_prev = net.state(f"{name}_s", n), net.state(f"{name}_y", n)
    terms = [net.op("xbar.dense", x, w)]
    if recurrent:
        h = net.const(f"{name}_H", net.rng.normal(0, 0.5, (n, n)))
        terms.append(net.op("xbar.dense", y_prev, h))
    if input_bias:
        terms.append(net.const(f"{name}_c", net.rng.normal(0, 0.3, n)))
    one = net.const("one", 1.0)
    zero = net.const("zero", 0.0)
    r_of = reset_state or y_prev
    if reset == "sub":
        r = net.op("dig.sub", one, r_of)
    elif reset == "add-neg":
        r = net.op("dig.add", one, net.op("dig.neg", r_of))
    else:
        r = net.op("dig.add", net.op("dig.neg", r_of), one)
    mul = lambda u, v: net.op("dig.mul", u, v)  # noqa: E731
    add = lambda u, v: net.op("dig.add", u, v)  # noqa: E731
    if decay is None:
        p = mul(s_prev, r)
    else:
        lc = net.const(f"{name}_l", decay)
        if decay_op is not None:
            lc = net.op(decay_op, lc)
        p = PRODUCTS[product](mul, lc, s_prev, r)
    pre = SUMS[total](add, terms, p)
    s = net.op("dig.relu", pre) if g == "relu" else pre
    y = _spike(net, s, spike, bias, one, zero)
    net.g.set_next(s_prev, s)
    net.g.set_next(y_prev, y)
    return Layer(s, y, s_prev, y_prev, pre)


def _spike(net: Net, s: str, spike: str, bias: object, one: str, zero: str) -> str:
    """``y = h(s + b)`` spelled as ``spike`` says (see :func:`snu`)."""
    if bias is None:
        return net.op("dig.cast", net.op("dig.greater", s, zero), to="f32")
    if spike in ("threshold", "sub-threshold"):
        thr = net.const("thr", -np.asarray(bias, np.float32))
        if spike == "threshold":
            compare = net.op("dig.greater", s, thr)
        else:
            compare = net.op("dig.greater", net.op("dig.sub", s, thr), zero)
        return net.op("dig.cast", compare, to="f32")
    b = net.const(f"{net.scope}_b", bias)
    u = net.op("dig.add", b, s) if spike == "bias-first" else net.op("dig.add", s, b)
    if spike == "sigmoid":
        return net.op("dig.sigmoid", u)
    if spike == "less":
        compare = net.op("dig.less", zero, u)
    elif spike == "ge":
        compare = net.op("dig.greater_equal", u, zero)
    else:
        compare = net.op("dig.greater", u, zero)
    if spike == "where":
        return net.op("dig.where", compare, one, zero)
    return net.op("dig.cast", compare, to="f32")


def one_layer(**kwargs: object) -> tuple[Graph, Layer]:
    net = Net()
    layer = snu(net, net.x, F, **kwargs)
    net.g.outputs.append(layer.y)
    net.g.verify()
    return net.g, layer


def unused_nodes(graph: Graph) -> list[str]:
    return [
        n.id
        for n in graph.nodes()
        if not any(graph.users(o) or graph.uses_outside_nodes(o) for o in n.outputs)
    ]


def op_counts(graph: Graph) -> Counter:
    return Counter(n.op.NAME for n in graph.nodes())


def layers_of(graph: Graph) -> list:
    return [n for n in graph.nodes() if n.op.NAME == "snu.layer"]


def assert_same_run(before: Graph, after: Graph, spikes: list[str], seed: int = 1) -> None:
    """Before and after compute the same: identical spikes, other shared values to 1e-5."""
    interpreter = pytest.importorskip(
        "snuc.runtime.interpreter",
        reason="numerical checks need the reference interpreter snuc.runtime.interpreter",
    )
    rng = np.random.default_rng(seed)
    xs = rng.uniform(0.0, 1.0, (T, B, before.type_of(before.inputs[0]).shape[1]))
    out0, values0 = interpreter.run(before, xs.astype(np.float32), mode="float", trace=True)
    out1, values1 = interpreter.run(after, xs.astype(np.float32), mode="float", trace=True)
    assert list(out0) == list(out1)
    for name in spikes:
        rate = values0[name].mean()
        assert 0.02 < rate < 0.98, f"spike rate {rate} of %{name} makes a weak test"
        assert np.array_equal(values0[name], values1[name]), name
    # Outputs and state values keep their names through the passes; other names may not.
    for name in [*before.outputs, *(st.next for st in before.states)]:
        np.testing.assert_allclose(values1[name], values0[name], rtol=0, atol=1e-5, err_msg=name)


# The front of the default pipeline: everything before the crossbar mapping.
LIFT_PIPELINE = ("verify", "canonicalize", "lift-snu", "dead-code", "verify")


def lift(graph: Graph) -> Graph:
    return run_pipeline(graph, None, [get_pass(name)() for name in LIFT_PIPELINE])


# --------------------------------------------------------------------------- infrastructure


def test_registry_holds_every_pass_as_a_frozen_dataclass():
    assert {"verify", "canonicalize", "lift-snu", "dead-code"} <= set(PASSES)
    for name, cls in PASSES.items():
        assert cls.name == name
        assert name == name.lower() and " " not in name and "_" not in name
        assert is_dataclass(cls) and issubclass(cls, Pass)
        assert cls.__dataclass_params__.frozen
        assert get_pass(name) is cls


def test_pass_options_cannot_change():
    @dataclass(frozen=True)
    class WithOption(Pass):
        name: ClassVar[str] = "with-option"
        level: int = 1

        def run(self, graph, target):
            return graph

    p = WithOption(level=2)
    assert [f.name for f in fields(p)] == ["level"]
    with pytest.raises(FrozenInstanceError):
        p.level = 3  # type: ignore[misc]


def test_get_pass_names_the_known_passes():
    with pytest.raises(SnucError) as info:
        get_pass("lift-snus")
    message = str(info.value)
    assert "'lift-snus'" in message and "\n" not in message
    for name in ("verify", "canonicalize", "lift-snu", "dead-code"):
        assert name in message


def test_default_pipeline_order():
    expected = [
        "verify",
        "canonicalize",
        "carry-spikes",
        "lift-snu",
        "lift-neurons",
        "dead-code",
        "lower-conv",
        "tile",
        "place",
        "quantize",
        "verify",
    ]
    assert [p.name for p in default_pipeline()] == expected
    assert [p.name for p in default_pipeline()] == list(DEFAULT_PIPELINE)
    names = pass_names()
    assert names[:6] == expected[:6]
    assert sorted(names) == sorted(PASSES)


def test_after_sees_every_pass_in_order_and_the_input_is_untouched():
    graph, layer = one_layer()
    before = graph.copy()
    seen: list[tuple[str, int]] = []
    out = run_pipeline(graph, None, after=lambda name, g: seen.append((name, len(g))))
    assert [name for name, _ in seen] == list(DEFAULT_PIPELINE)
    assert seen[-1][1] == len(out)
    assert graph == before
    assert out.outputs == graph.outputs


def test_run_pipeline_takes_an_explicit_list():
    graph, _ = one_layer()
    out = run_pipeline(graph, None, [Canonicalize()])
    assert op_counts(out)["dig.step"] == 1 and not layers_of(out)


@dataclass(frozen=True)
class _BreakOutputs(Pass):
    """A faulty pass: names an output that does not exist."""

    name: ClassVar[str] = "break-outputs"

    def run(self, graph, target):
        graph = graph.copy()
        graph.outputs.append("nowhere")
        return graph


def test_a_pass_that_breaks_the_graph_is_named():
    graph, _ = one_layer()
    with pytest.raises(VerifyError, match=r"pass 'break-outputs' left an invalid graph.*nowhere"):
        run_pipeline(graph, None, [Canonicalize(), _BreakOutputs(), LiftSNU()])


def test_a_broken_input_is_not_blamed_on_a_pass():
    graph, _ = one_layer()
    graph.outputs.append("missing")
    with pytest.raises(VerifyError) as info:
        run_pipeline(graph, None, [Canonicalize()])
    assert "canonicalize" not in str(info.value) and "missing" in str(info.value)


def test_verify_pass_returns_the_graph_and_rejects_a_broken_one():
    graph, _ = one_layer()
    assert Verify().run(graph, None) is graph
    graph.outputs.append("missing")
    with pytest.raises(VerifyError, match="missing"):
        Verify().run(graph, None)


def test_dead_code_drops_unused_nodes_and_constants():
    net = Net()
    used = net.op("dig.relu", net.x)
    dead = net.op("dig.add", net.op("dig.neg", net.x), net.const("unused", 2.0))
    net.g.outputs.append(used)
    before = net.g.copy()
    out = DeadCode().run(net.g, None)
    assert [n.id for n in out.nodes()] == [used]
    assert not out.has_value(dead) and "unused" not in out.constants
    assert net.g == before


def test_match_needs_a_reason_to_fail():
    assert Match.success(3) and Match.success(3).value == 3
    failed = Match.fail("no")
    assert not failed and failed.reason == "no"
    with pytest.raises(ValueError):
        Match.fail("")


# --------------------------------------------------------------------------- canonicalize


def spike_graph(compare: str, threshold: object, form: str = "cast") -> tuple[Graph, str]:
    net = Net()
    c = net.const("c", threshold)
    operands = (c, net.x) if compare == "less" else (net.x, c)
    cond = net.op(f"dig.{compare}", *operands)
    if form == "where":
        y = net.op("dig.where", cond, net.const("on", 1.0), net.const("off", 0.0))
    else:
        y = net.op("dig.cast", cond, to="f32")
    net.g.outputs.append(y)
    return net.g, y


def tie_inputs(threshold: np.ndarray) -> np.ndarray:
    """Values at, just above and just below the threshold, subnormals, zeros of both signs."""
    c = np.broadcast_to(np.asarray(threshold, np.float32), (F,))
    tiny = np.float32(1e-45)
    rows = [
        c,
        np.nextafter(c, np.float32(np.inf)),
        np.nextafter(c, np.float32(-np.inf)),
        c + np.float32(1e-3),
        c - np.float32(1e-3),
        np.full(F, tiny),
        np.full(F, -tiny),
        np.full(F, -0.0, np.float32),
        np.zeros(F, np.float32),
    ]
    return np.stack(rows).astype(np.float32)[:, None, :]


@pytest.mark.parametrize(
    ("compare", "threshold", "form"),
    [
        ("greater", 0.0, "cast"),
        ("greater", -0.0, "cast"),
        ("greater", 0.0, "where"),
        ("less", 0.0, "cast"),
        ("greater", 1.0, "cast"),
        ("greater", 1e-40, "cast"),
        ("less", -0.75, "where"),
        ("greater", [0.5, -1.0, 0.0, 1e-38], "cast"),
    ],
)
def test_comparisons_become_exact_steps(compare, threshold, form):
    graph, y = spike_graph(compare, threshold, form)
    out = Canonicalize().run(graph, None)
    step = out.producer(y)
    assert step.op.NAME == "dig.step" and step.loc == graph.producer(y).loc
    zero = not np.any(np.asarray(threshold))
    assert op_counts(out) == Counter({"dig.step": 1} if zero else {"dig.step": 1, "dig.add": 1})
    if not zero:
        shifted = out.producer(step.inputs[0])
        assert shifted.inputs[0] == "x"
        np.testing.assert_array_equal(out.constants[shifted.inputs[1]], -np.float32(threshold))
    interpreter = pytest.importorskip("snuc.runtime.interpreter", reason="needs the interpreter")
    xs = tie_inputs(np.asarray(threshold))
    want = interpreter.run(graph, xs)[y]
    assert np.array_equal(interpreter.run(out, xs)[y], want)
    assert want.any() and not want.all()


def test_greater_equal_is_not_a_step():
    graph, y = spike_graph("greater_equal", 0.0)
    assert "greater_equal" in match_spike(graph, graph.producer(y)).reason
    assert Canonicalize().run(graph, None) == graph


def test_a_computed_threshold_is_not_a_step():
    net = Net()
    y = net.op("dig.cast", net.op("dig.greater", net.x, net.op("dig.neg", net.x)), to="f32")
    net.g.outputs.append(y)
    reason = match_spike(net.g, net.g.producer(y)).reason
    assert "is not a constant" in reason


def test_a_cast_to_another_dtype_is_not_a_step():
    net = Net()
    cond = net.op("dig.greater", net.x, net.const("c", 0.0))
    y = net.op("dig.cast", cond, to="i64")
    net.g.outputs.append(y)
    assert "i64" in match_spike(net.g, net.g.producer(y)).reason
    assert Canonicalize().run(net.g, None) == net.g


@pytest.mark.parametrize(
    ("op", "constant_first", "neutral"),
    [
        ("dig.add", False, 0.0),
        ("dig.add", True, 0.0),
        ("dig.sub", False, 0.0),
        ("dig.mul", False, 1.0),
        ("dig.mul", True, [1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_neutral_operations_are_removed(op, constant_first, neutral):
    net = Net()
    v = net.op("dig.relu", net.x)
    k = net.const("k", neutral)
    z = net.op(op, *((k, v) if constant_first else (v, k)))
    out_value = net.op("dig.sigmoid", z)
    net.g.outputs.append(out_value)
    out = Canonicalize().run(net.g, None)
    assert op_counts(out) == Counter({"dig.relu": 1, "dig.sigmoid": 1})
    assert out.producer(out_value).inputs == (v,)


def test_neutral_operation_that_broadcasts_or_names_an_output_stays():
    net = Net()
    v = net.op("dig.relu", net.x)
    widened = net.op(
        "dig.add", net.op("dig.reshape", v, shape=("B", F, 1)), net.const("z", [0.0] * 3)
    )
    named = net.op("dig.mul", v, net.const("one", 1.0))
    net.g.outputs += [widened, named]
    graph = net.g
    assert "broadcasts" in match_identity(graph, graph.producer(widened)).reason
    assert "graph output" in match_identity(graph, graph.producer(named)).reason
    assert Canonicalize().run(graph, None) == graph


def test_zero_minus_v_is_not_neutral():
    net = Net()
    z = net.op("dig.sub", net.const("k", 0.0), net.x)
    net.g.outputs.append(net.op("dig.relu", z))
    assert "subtrahend %x is not constant 0" in match_identity(net.g, net.g.producer(z)).reason


def test_double_negation_is_removed():
    net = Net()
    inner = net.op("dig.neg", net.x)
    out_value = net.op("dig.relu", net.op("dig.neg", inner))
    net.g.outputs.append(out_value)
    out = Canonicalize().run(net.g, None)
    assert [(n.op.NAME, n.inputs) for n in out.nodes()] == [("dig.relu", ("x",))]
    assert "is not a dig.neg" in match_double_negation(net.g, net.g.producer(inner)).reason


def test_sub_of_a_constant_becomes_an_add_only_where_it_helps():
    net = Net()
    k = net.const("k", [0.5, -0.25, 1.0, 2.0])
    feeds_step = net.op("dig.sub", net.x, k)
    feeds_relu = net.op("dig.sub", net.x, k)
    net.g.outputs += [net.op("dig.step", feeds_step), net.op("dig.relu", feeds_relu)]
    graph = net.g
    assert "stays a sub" in match_sub_constant(graph, graph.producer(feeds_relu)).reason
    out = Canonicalize().run(graph, None)
    rewritten = out.producer(feeds_step)
    assert rewritten.op.NAME == "dig.add" and rewritten.loc == graph.producer(feeds_step).loc
    np.testing.assert_array_equal(out.constants[rewritten.inputs[1]], -graph.constants[k])
    assert out.producer(feeds_relu).op.NAME == "dig.sub"
    interpreter = pytest.importorskip("snuc.runtime.interpreter", reason="needs the interpreter")
    xs = np.random.default_rng(3).normal(size=(T, B, F)).astype(np.float32)
    xs[0, 0] = graph.constants[k]
    for name, want in interpreter.run(graph, xs).items():
        assert np.array_equal(interpreter.run(out, xs)[name], want)


def test_canonicalize_logs_why_a_rule_did_not_apply(caplog):
    graph, _ = spike_graph("greater_equal", 0.0)
    with caplog.at_level(logging.DEBUG, logger="snuc.passes"):
        Canonicalize().run(graph, None)
    assert any("greater_equal" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- lift-snu


POSITIVE = {
    "greater-cast": {},
    "where": {"spike": "where"},
    "less-cast": {"spike": "less"},
    "bias-first": {"spike": "bias-first"},
    "threshold": {"spike": "threshold", "bias": -1.0},
    "sub-threshold": {"spike": "sub-threshold", "bias": -0.7},
    "sum-swapped": {"total": "p+a"},
    "product-l*(s*r)": {"product": "l*(s*r)"},
    "product-(s*r)*l": {"product": "(s*r)*l"},
    "product-r*(l*s)": {"product": "r*(l*s)"},
    "product-s*(r*l)": {"product": "s*(r*l)"},
    "product-(r*s)*l": {"product": "(r*s)*l"},
    "reset-add-neg": {"reset": "add-neg"},
    "reset-neg-add": {"reset": "neg-add", "product": "r*(l*s)"},
    "per-neuron": {
        "decay": np.linspace(0.5, 1.0, N),
        "bias": np.linspace(-1.0, -0.2, N),
    },
    "no-decay-factor": {"decay": None},
    "input-bias": {"input_bias": True, "total": "(a0+p)+rest"},
    "ssnu": {"spike": "sigmoid"},
    "identity-g": {"g": "identity"},
    "identity-g-no-bias": {"g": "identity", "bias": None},
    "relu-no-bias": {"bias": None},
    "recurrent": {"recurrent": True},
    "recurrent-(a0+p)+rest": {"recurrent": True, "total": "(a0+p)+rest"},
    "recurrent-a0+(p+rest)": {"recurrent": True, "total": "a0+(p+rest)", "product": "s*(r*l)"},
    "recurrent-ssnu-rest+(p+a0)": {
        "recurrent": True,
        "total": "rest+(p+a0)",
        "spike": "sigmoid",
        "g": "identity",
    },
}


@pytest.mark.parametrize("variant", list(POSITIVE))
def test_snu_variants_lift_to_one_layer(variant):
    kwargs = POSITIVE[variant]
    graph, layer = one_layer(**kwargs)
    out = lift(graph)

    (node,) = layers_of(out)
    assert node.outputs == (layer.s, layer.y)
    assert node.inputs[1:3] == (layer.s_prev, layer.y_prev)
    assert node.op.g == kwargs.get("g", "relu")
    assert node.op.h == ("sigmoid" if kwargs.get("spike") == "sigmoid" else "step")
    assert node.loc == Loc("onnx:/snu1")
    decay = kwargs.get("decay", 0.8)
    want_decay = np.float32(1.0) if decay is None else np.asarray(decay, np.float32)
    np.testing.assert_array_equal(out.constants[node.inputs[3]], want_decay)
    bias = kwargs.get("bias", -0.5)
    want_bias = np.float32(0.0) if bias is None else np.asarray(bias, np.float32)
    np.testing.assert_array_equal(out.constants[node.inputs[4]], want_bias)

    terms_of_a = 1 + kwargs.get("recurrent", False) + kwargs.get("input_bias", False)
    dense = 1 + kwargs.get("recurrent", False)
    want = Counter({"snu.layer": 1, "xbar.dense": dense, "dig.add": terms_of_a - 1})
    assert op_counts(out) == +want
    assert out.outputs == [layer.y] and out.state(layer.s_prev).next == layer.s
    assert not unused_nodes(out)
    assert all(out.users(c) for c in out.constants)
    assert_same_run(graph, out, [] if kwargs.get("spike") == "sigmoid" else [layer.y])


def test_lift_alone_leaves_no_dead_nodes_and_keeps_its_input():
    graph, layer = one_layer(recurrent=True, total="(a0+p)+rest", reset="add-neg")
    canonical = Canonicalize().run(graph, None)
    before = canonical.copy()
    out = LiftSNU().run(canonical, None)
    assert len(layers_of(out)) == 1 and not unused_nodes(out)
    assert canonical == before
    assert LiftSNU().run(out, None) == out


def test_reused_sum_keeps_the_existing_synaptic_input():
    graph, layer = one_layer(recurrent=True, total="a+p")
    (node,) = layers_of(lift(graph))
    a = graph.producer(layer.pre).inputs[0]
    assert node.inputs[0] == a and graph.producer(a).op.NAME == "dig.add"


def test_two_layer_stack_lifts_both_layers():
    net = Net()
    first = snu(net, net.x, F, name="snu1", spike="where")
    second = snu(net, first.y, N, N2, name="snu2", spike="threshold", bias=-0.3, product="l*(s*r)")
    net.g.outputs += [first.y, second.y]
    out = lift(net.g)
    layers = layers_of(out)
    assert [n.outputs for n in layers] == [(first.s, first.y), (second.s, second.y)]
    assert [n.loc.source for n in layers] == ["onnx:/snu1", "onnx:/snu2"]
    assert op_counts(out) == Counter({"snu.layer": 2, "xbar.dense": 2})
    assert out.producer(layers[1].inputs[0]).inputs[0] == first.y
    np.testing.assert_array_equal(out.constants[layers[1].inputs[4]], np.float32(-0.3))
    assert_same_run(net.g, out, [first.y, second.y])


def test_convolutional_snu_with_per_channel_parameters_lifts():
    net = Net("conv1", input_shape=("B", 1, 5, 5))
    g, x = net.g, net.x
    s_prev = g.add_state("s", TensorType("f32", ("B", 2, 3, 3)))
    y_prev = g.add_state("y", TensorType("f32", ("B", 2, 3, 3)))
    a = net.op("xbar.conv", x, net.const("W", net.rng.normal(0, 1, (2, 1, 3, 3))))
    decay = net.const("l", np.array([0.6, 0.9]).reshape(2, 1, 1))
    reset = net.op("dig.sub", net.const("one", 1.0), y_prev)
    s = net.op(
        "dig.relu", net.op("dig.add", net.op("dig.mul", reset, net.op("dig.mul", s_prev, decay)), a)
    )
    bias = net.const("b", np.array([-0.5, -1.0]).reshape(2, 1, 1))
    y = net.op(
        "dig.cast", net.op("dig.less", net.const("zero", 0.0), net.op("dig.add", bias, s)), to="f32"
    )
    g.set_next(s_prev, s)
    g.set_next(y_prev, y)
    g.outputs.append(y)
    out = lift(g)
    (node,) = layers_of(out)
    assert node.inputs == (a, s_prev, y_prev, decay, bias) and node.outputs == (s, y)
    assert op_counts(out) == Counter({"snu.layer": 1, "xbar.conv": 1})
    interpreter = pytest.importorskip("snuc.runtime.interpreter", reason="needs the interpreter")
    xs = np.random.default_rng(2).uniform(0, 1, (T, B, 1, 5, 5)).astype(np.float32)
    want, got = interpreter.run(g, xs)[y], interpreter.run(out, xs)[y]
    assert np.array_equal(got, want) and 0.02 < want.mean() < 0.98


@dataclass(frozen=True)
class Negative:
    """A graph that must not lift, the state to ask about and the reason's key phrase."""

    build: Callable[[], tuple[Graph, Layer, str]]
    reason: str


def _computed_decay():
    graph, layer = one_layer(decay_op="dig.sigmoid", decay=1.5)
    return graph, layer, layer.y_prev


def _swapped_states():
    graph, layer = one_layer()
    graph.set_next(layer.s_prev, layer.y)
    graph.set_next(layer.y_prev, layer.s)
    return graph, layer, layer.s_prev


def _state_carries_pre_activation():
    graph, layer = one_layer()
    graph.set_next(layer.s_prev, layer.pre)
    return graph, layer, layer.y_prev


def _greater_equal():
    graph, layer = one_layer(spike="ge")
    return graph, layer, layer.y_prev


def _two_layers_second_resets_from_first() -> tuple[Graph, Layer, Layer]:
    net = Net()
    first = snu(net, net.x, F, name="snu1")
    second = snu(net, first.y, N, N, name="snu2", reset_state=first.y_prev)
    net.g.outputs.append(second.y)
    return net.g, first, second


def _reset_from_another_layer():
    graph, _, second = _two_layers_second_resets_from_first()
    return graph, second, second.y_prev


def _no_reset():
    net = Net()
    net.scope = "leaky"
    s_prev = net.state("s", N)
    y_prev = net.state("y", N)
    a = net.op("xbar.dense", net.x, net.const("W", net.rng.normal(size=(F, N))))
    s = net.op("dig.relu", net.op("dig.add", a, net.op("dig.mul", net.const("l", 0.8), s_prev)))
    y = net.op("dig.step", net.op("dig.add", s, net.const("b", -0.5)))
    net.g.set_next(s_prev, s)
    net.g.set_next(y_prev, y)
    net.g.outputs.append(y)
    return net.g, Layer(s, y, s_prev, y_prev, ""), y_prev


NEGATIVE = {
    "computed-decay": Negative(_computed_decay, "is not a constant (a decay must be one)"),
    "swapped-states": Negative(_swapped_states, "nor 1 - %snu1_s"),
    "state-carries-pre-activation": Negative(
        _state_carries_pre_activation, "neither a state's next value s nor s + bias"
    ),
    "greater-equal": Negative(_greater_equal, "computed by dig.cast, not by dig.step"),
    "reset-from-another-layer": Negative(
        _reset_from_another_layer, "is 1 - %snu1_y, but the state carrying this layer's output"
    ),
    "no-reset": Negative(_no_reset, "has 0 reset factors 1 - %y"),
}


@pytest.mark.parametrize("case", list(NEGATIVE))
def test_non_snus_stay_and_say_why(case, caplog):
    graph, layer, y_prev = NEGATIVE[case].build()
    graph.verify()
    with caplog.at_level(logging.DEBUG, logger="snuc.passes"):
        out = lift(graph)
    reason = match_snu(Canonicalize().run(graph, None), y_prev).reason
    assert NEGATIVE[case].reason in reason
    assert "\n" not in reason
    assert any(reason in r.getMessage() for r in caplog.records)
    lifted = [n.outputs for n in layers_of(out)]
    assert (layer.s, layer.y) not in lifted
    assert not unused_nodes(out)
    assert_same_run(graph, out, [layer.y])


def test_reset_from_another_layer_still_lifts_the_first_layer():
    graph, first, _ = _two_layers_second_resets_from_first()
    (node,) = layers_of(lift(graph))
    assert node.outputs == (first.s, first.y)


def test_match_snu_on_something_else():
    graph, layer = one_layer()
    assert "is not a state" in match_snu(graph, "x").reason
    canonical = Canonicalize().run(graph, None)
    assert "computed by dig.relu" in match_snu(canonical, layer.s_prev).reason


def test_a_bias_that_is_not_constant_is_not_lifted():
    net = Net()
    net.scope = "snu1"
    s_prev, y_prev = net.state("s", N), net.state("y", N)
    a = net.op("xbar.dense", net.x, net.const("W", net.rng.normal(size=(F, N))))
    r = net.op("dig.sub", net.const("one", 1.0), y_prev)
    p = net.op("dig.mul", net.op("dig.mul", net.const("l", 0.8), s_prev), r)
    s = net.op("dig.relu", net.op("dig.add", a, p))
    y = net.op("dig.step", net.op("dig.add", s, a))
    net.g.set_next(s_prev, s)
    net.g.set_next(y_prev, y)
    net.g.outputs.append(y)
    assert "is not a constant" in match_snu(net.g, y_prev).reason


# --------------------------------------------------------------------------- golden files


GOLDEN_CASES = {
    "canonicalize.snu-greater-cast": ("canonicalize", {}),
    "canonicalize.snu-where": ("canonicalize", {"spike": "where"}),
    "canonicalize.snu-threshold": ("canonicalize", {"spike": "threshold", "bias": -1.0}),
    "lift-snu.recurrent": ("lift-snu", {"recurrent": True, "total": "(a0+p)+rest"}),
    "lift-snu.ssnu-identity": ("lift-snu", {"spike": "sigmoid", "g": "identity"}),
}


def _small_layer(kwargs: dict) -> Graph:
    net = Net(input_shape=("B", 3))
    layer = snu(net, net.x, 3, 4, **kwargs)
    net.g.outputs.append(layer.y)
    return net.g


@pytest.mark.parametrize("case", list(GOLDEN_CASES))
def test_golden(case):
    """Input IR, expected IR after the pass; set SNUC_UPDATE_GOLDEN=1 to rewrite them."""
    text = pytest.importorskip("snuc.ir.text", reason="golden files need the text IR")
    pass_name, kwargs = GOLDEN_CASES[case]
    source, expected = GOLDEN / f"{case}.in.ir", GOLDEN / f"{case}.out.ir"
    if os.environ.get("SNUC_UPDATE_GOLDEN"):
        graph = _small_layer(kwargs)
        if pass_name == "lift-snu":
            graph = Canonicalize().run(graph, None)
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(text.print_graph(graph))
        expected.write_text(text.print_graph(get_pass(pass_name)().run(graph, None)))
    graph = text.parse_graph(source.read_text(), filename=str(source))
    assert text.print_graph(get_pass(pass_name)().run(graph, None)) == expected.read_text()
