"""bench/layer_forms.py: the RTN and GPTQ quantizers on small random matrices, and the size arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from bench.layer_forms import FFN, FORMS, JOBBERT_LAYERS, LayerForm, _levels, gptq, layer_budget, rtn


def _correlated(tokens: int, k: int, seed: int) -> np.ndarray:
    """Inputs X = Z @ A with A ill-conditioned (singular values 1 .. 1e-3) and a few loud channels."""
    rng = np.random.default_rng(seed)
    left, _ = np.linalg.qr(rng.standard_normal((k, k)))
    right, _ = np.linalg.qr(rng.standard_normal((k, k)))
    x = rng.standard_normal((tokens, k)) @ (left * np.logspace(0, -3, k)) @ right
    x[:, :3] *= 8
    return x


def _codes(values: np.ndarray, scale: np.ndarray, zero: np.ndarray, block: int) -> np.ndarray:
    """values / scale + zero per group: the integer codes, if `values` lie on the groups' grid."""
    k, n = values.shape
    return (values.reshape(k // block, block, n) / scale[:, None] + zero[:, None]).reshape(k, n)


@pytest.mark.parametrize("bits, block, zero_point, act_order",
                         [(4, 32, True, False), (4, 32, True, True), (3, 16, True, False), (2, 16, True, True),
                          (4, 16, False, False), (3, 32, False, True)])
def test_gptq_output_lies_on_its_groups_grid(bits: int, block: int, zero_point: bool, act_order: bool) -> None:
    rng = np.random.default_rng(bits * 100 + block)
    weight = rng.standard_normal((64, 24)).astype(np.float32)
    x = _correlated(512, 64, seed=1)
    values, scale, zero = gptq(weight, x.T @ x, bits, block, zero_point, act_order=act_order)
    assert values.shape == weight.shape and values.dtype == np.float32
    assert scale.shape == zero.shape == (64 // block, 24) and (scale > 0).all()
    codes = _codes(values, scale, zero, block)
    low, high = _levels(bits, zero_point)
    assert np.allclose(codes, np.round(codes), atol=1e-3)
    assert codes.round().min() >= low and codes.round().max() <= high
    assert len(np.unique(codes.round())) > 2 ** bits // 2  # uses the grid, not a few levels
    if not zero_point:
        assert (zero == 0).all()


@pytest.mark.parametrize("bits, zero_point", [(4, False), (4, True), (3, True), (2, True)])
def test_rtn_round_trips_within_half_a_step(bits: int, zero_point: bool) -> None:
    rng = np.random.default_rng(bits)
    weight = (rng.standard_normal((96, 40)) + rng.uniform(-1, 1, (1, 40))).astype(np.float32)  # blocks off zero too
    values, scale, zero = rtn(weight, bits, 32, zero_point)
    step = np.repeat(scale, 32, axis=0)
    assert (np.abs(weight - values) <= step / 2 * (1 + 1e-5)).all()
    codes = _codes(values, scale, zero, 32)
    low, high = _levels(bits, zero_point)
    assert np.allclose(codes, np.round(codes), atol=1e-3)
    assert codes.round().min() >= low and codes.round().max() <= high


@pytest.mark.parametrize("bits, block, act_order", [(4, 32, False), (4, 32, True), (3, 32, False), (2, 16, False)])
def test_gptq_beats_rtn_on_correlated_inputs(bits: int, block: int, act_order: bool) -> None:
    rng = np.random.default_rng(7)
    weight = rng.standard_normal((128, 48)).astype(np.float32)
    x = _correlated(2048, 128, seed=3)
    rounded = rtn(weight, bits, block, True)[0]
    compensated = gptq(weight, x.T @ x, bits, block, True, act_order=act_order)[0]
    error_rtn = np.linalg.norm(x @ (weight - rounded))
    error_gptq = np.linalg.norm(x @ (weight - compensated))
    assert error_gptq < 0.8 * error_rtn, (error_gptq, error_rtn)
    # ... by moving error to where the inputs do not look, not by rounding better: the weights move more.
    assert np.linalg.norm(weight - compensated) > np.linalg.norm(weight - rounded)


def test_gptq_with_uncorrelated_inputs_is_rtn() -> None:
    """With H diagonal no later row can compensate a rounding error, so GPTQ is round-to-nearest."""
    weight = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    hessian = np.diag(np.random.default_rng(1).uniform(1, 5, 64))
    assert np.array_equal(gptq(weight, hessian, 3, 16, True)[0], rtn(weight, 3, 16, True)[0])


def test_gptq_refuses_ragged_blocks() -> None:
    with pytest.raises(ValueError, match="multiples"):
        gptq(np.ones((48, 4), np.float32), np.eye(48), 4, 32, True)


def test_sizes() -> None:
    assert JOBBERT_LAYERS == 84_934_656
    form = LayerForm("4-bit, block 32, zero point", 4, 32, True)
    assert form.bits_per_weight == 4 + 16 / 32 + 4 / 32
    assert form.layer_mb() == pytest.approx(JOBBERT_LAYERS * 4.625 / 8 / 1e6)
    assert LayerForm("symmetric", 4, 32, False).bits_per_weight == 4.5
    assert LayerForm("2-bit", 2, 16, True).bits_per_weight == 2 + 18 / 16
    ffn_only = next(f for f in FORMS if f.only == FFN)
    assert JOBBERT_LAYERS * 4.625 / 8 / 1e6 < ffn_only.layer_mb() < JOBBERT_LAYERS / 1e6


def test_ffn_pattern_skips_the_attention_output() -> None:
    import re

    names = ["/model/encoder/layer.3/intermediate/dense/MatMul", "/model/encoder/layer.3/output/dense/MatMul",
             "/model/encoder/layer.3/attention/output/dense/MatMul", "/model/encoder/layer.3/attention/attn/o/MatMul",
             "/model/encoder/layer.3/attention/self/query/MatMul"]
    assert [bool(re.search(FFN, n)) for n in names] == [True, True, False, False, False]


def test_layer_budget_uses_the_smallest_table_form_that_holds_on_both_models() -> None:
    def cosines(low: float) -> dict:
        return {"min_cosine_titles": low, "min_cosine_full_length": 0.999}

    table_forms = {
        "models": {"minilm": {"int8 rows (shipped)": cosines(0.997), "small": cosines(0.999), "tiny": cosines(0.95),
                              "big": cosines(0.999)},
                   "mpnet": {"int8 rows (shipped)": cosines(0.996), "small": cosines(0.992), "tiny": cosines(0.999),
                             "big": cosines(0.995)}},
        "jobbert": {"int8 rows (shipped)": {"table_mb": 193.0, "artifact_mb": 287.0},
                    "small": {"table_mb": 128.0}, "tiny": {"table_mb": 77.0}, "big": {"table_mb": 140.0}}}
    budget = layer_budget(table_forms, int8_layers=85.0)
    assert budget["table_form"] == "small"
    assert budget["other_mb"] == pytest.approx(9.0) and budget["layer_mb"] == pytest.approx(150 - 128 - 9)
    assert budget["bits_per_weight"] == pytest.approx(13 * 8e6 / JOBBERT_LAYERS)
    table_forms["models"]["mpnet"]["small"] = table_forms["models"]["mpnet"]["big"] = cosines(0.98)
    assert layer_budget(table_forms, 85.0) is None


def test_report_states_the_budget_and_the_verdict() -> None:
    from bench.layer_forms import to_markdown

    def metrics(low: float) -> dict:
        return {"min_cosine_titles": low, "mean_cosine_titles": 0.999, "min_cosine_full_length": low,
                "weight_error": 0.1, "full_length_cosines": [low, 0.995, 0.999, 0.999]}

    names = [form.name for form in FORMS[:3]]
    result = {"date": "today", "machine": {"cpu": "cpu", "cores": 2}, "seconds": 1.0, "titles": 512, "long_texts": 4,
              "probes": 1, "calibration": {"description": "some titles"},
              "models": {short: {n: metrics(c) for n, c in zip(names, (0.9, 0.995, 0.97))}
                         for short in ("minilm", "mpnet")},
              "jobbert": {f.name: {"bits_per_weight": f.bits_per_weight, "layer_mb": f.layer_mb()}
                          for f in FORMS[:3]},
              "budget": {"table_form": "rotated", "holding_table_forms": ["rotated"], "table_mb": 128.0,
                         "other_mb": 8.6, "int8_layers_mb": 85.3, "layer_mb": 13.4, "bits_per_weight": 1.26}}
    text = to_markdown(result)
    assert f"| {names[1]} | 4.62 | 49 |" in text and text.count("| yes |") == 1
    assert "leaves 13.4 MB for the layers: 1.26 bits per weight" in text and "No layer form here fits it" in text
    assert f"Closest to the bar: {names[1]}" in text
    result["budget"]["layer_mb"] = 50.0
    assert f"{names[0]}, {names[1]}, {names[2]} fit it, and {names[1]} holds 0.99" in to_markdown(result)
