"""The rope type registry: every type is one module under `rope/types/`, and a new one needs nothing else.

The parity of each registered type with transformers is in test_rope_parity.py; here a made-up type, written as
one module would be, runs through the spec, the HF round trip, the frequencies, evaluation and search seeds.
"""

from __future__ import annotations

import importlib
import pkgutil

import numpy as np
import pytest

from longrope_jax import rope
from longrope_jax.rope import registry
from longrope_jax.rope.basics import default_inv_freq


@pytest.fixture
def half_rope():
    """A toy type: every frequency halved beyond pair `cut`, as a file in rope/types/ would define it."""

    @rope.register_rope_type
    class HalfRope(rope.RopeType):
        name = "half_test"
        hf_names = ("half_test", "halving")
        hf_keys = ("factor",)
        requires_factor = True
        classic_method = "half"
        order = 50

        def inv_freq(self, spec, seq_len):
            inv = default_inv_freq(spec.theta, spec.rotary_dim)
            return np.where(np.arange(len(inv)) >= 2, inv / spec.factor, inv)

        def attention_scale(self, spec):
            return 1.25

        def classic_fields(self, scale, original):
            return {"rope_type": self.name, "factor": scale, "max_position_embeddings": original}

    yield HalfRope
    del registry._TYPES["half_test"]


def test_every_module_in_rope_types_registers_exactly_its_type():
    from longrope_jax.rope import types

    modules = {m.name for m in pkgutil.iter_modules(types.__path__)}
    registered = registry.registered_types()
    assert modules == set(registered)
    for name in modules:
        module = importlib.import_module(f"longrope_jax.rope.types.{name}")
        assert type(registered[name]).__module__ == module.__name__
    assert set(rope.ROPE_TYPES) == modules


def test_a_new_type_works_everywhere_without_other_edits(half_rope):
    spec = rope.from_hf_config({"head_dim": 8, "max_position_embeddings": 64,
                                "rope_scaling": {"rope_type": "halving", "factor": 4.0, "beta_fast": 3}})
    assert (spec.rope_type, spec.factor, spec.beta_fast) == ("half_test", 4.0, None)  # only its own keys are read
    assert spec.to_hf() == {"rope_type": "half_test", "rope_theta": 10000.0, "factor": 4.0}
    inv, scale = rope.frequencies(spec, 64)
    base = default_inv_freq(10000.0, 8)
    np.testing.assert_allclose(inv, np.float32([base[0], base[1], base[2] / 4, base[3] / 4]))
    assert scale == 1.25
    with pytest.raises(ValueError, match="requires the field 'factor'"):
        rope.RopeSpec(rope_type="half_test", head_dim=8)
    # A classic method is an evaluation baseline and a search seed at once.
    from longrope_jax.rope.factors import method_factors
    from longrope_jax.rope.registry import classic_methods

    assert list(classic_methods()) == ["pi", "ntk", "dynamic", "yarn", "half"]
    np.testing.assert_allclose(method_factors(rope.RopeSpec(head_dim=8), "half", 4.0), [1, 1, 4, 4], rtol=1e-12)


def test_unknown_types_are_named_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown rope_type 'xpos'; use one of default, "):
        rope.RopeSpec(rope_type="xpos")
    with pytest.raises(ValueError, match="unknown rope type 'xpos' in rope_scaling; supported: .*longrope2"):
        rope.from_hf_config({"head_dim": 8, "max_position_embeddings": 64, "rope_scaling": {"rope_type": "xpos"}})
    with pytest.raises(ValueError, match="registered twice"):
        rope.register_rope_type(type(registry.rope_type("yarn")))


def test_hf_round_trip_of_every_registered_type():
    """Each type's to_hf is read back by from_hf_config as the same spec (ntk exports as default with θ')."""
    examples = {
        "default": {},
        "linear": {"factor": 4.0},
        "ntk": {"factor": 4.0},
        "dynamic": {"factor": 2.0},
        "yarn": {"factor": 8.0, "original_max_position_embeddings": 256, "beta_fast": 16.0, "truncate": False},
        "llama3": {"factor": 8.0, "original_max_position_embeddings": 256, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0},
        "longrope": {"original_max_position_embeddings": 256, "short_factor": [1.0, 1.0, 1.1, 1.2],
                     "long_factor": [1.0, 2.0, 4.0, 8.0], "critical_dim": 2},
    }
    assert set(examples) == set(registry.registered_types())
    for name, fields in examples.items():
        spec = rope.RopeSpec(rope_type=name, head_dim=8, max_position_embeddings=2048, **fields)
        back = rope.from_hf_config({"head_dim": 8, "max_position_embeddings": 2048, "rope_scaling": spec.to_hf()})
        expected = spec
        if name == "ntk":
            expected = rope.RopeSpec(head_dim=8, max_position_embeddings=2048,
                                     theta=rope.ntk_aware_theta(10000.0, 4.0, 8))
        if name == "longrope":  # the attention factor is written explicitly
            expected = spec.replace(attention_factor=rope.attention_scale(spec))
        assert back == expected, name
        np.testing.assert_allclose(rope.frequencies(back, 4096)[0], rope.frequencies(spec, 4096)[0], rtol=1e-7)
