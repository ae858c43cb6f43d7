"""Check whether onnxruntime's CPU MatMulInteger (uint8 A x int8 B, "U8S8") is exact.

On x86 CPUs with AVX2 (or AVX-512BW) but without VNNI, MLAS multiplies with `vpmaddubsw`, which
adds two adjacent-K products u8*s8 into an int16 with saturation. This script builds one-node
ONNX models, feeds adversarial and random inputs, and compares onnxruntime's int32 output with an
exact int64 numpy reference `(A - a_zero_point) @ B`.

Run it natively and under `qemu-x86_64-static -cpu Haswell` (no VNNI, no AVX-512) to compare
kernels. The CPU features numpy detects (via CPUID, so the emulated CPU's) are printed first.

Weight formats (--weights):
  int7     B in [-63, 63]
  int8     B in [-127, 127]
  pair128  B in [-127, 127] with |B[k, n]| + |B[k+1, n]| <= 128 for every even k
  file     B from --weights-file (an int8 .npy, e.g. what the exporter wrote); K and N are its shape
Exit status: 0 if every case is exact, 1 otherwise (so it can back a test: tests/test_avx2_exactness.py).
Results of a full run: bench/results/avx2_exactness.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import asdict, dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

WEIGHT_LIMITS = {"int7": 63, "int8": 127, "pair128": 127}


@dataclass
class CaseResult:
    weights: str
    inputs: str
    b_source: str
    a_zero_point: int
    M: int
    K: int
    N: int
    exact: bool
    max_abs_error: int
    wrong_outputs: int


def cpu_features() -> str:
    """Return the SIMD features numpy detected through CPUID (the emulated CPU's under qemu)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    # numpy has no AVX-VNNI (VEX) flag; MLAS would use it, but qemu's CPU models here lack it too.
    wanted = ["SSSE3", "AVX", "AVX2", "FMA3", "AVX512F", "AVX512BW", "AVX512VNNI", "AVX512_CLX"]
    return " ".join(f"{name}={int(__cpu_features__.get(name, False))}" for name in wanted)


def build_model(B: np.ndarray | None, K: int, N: int, a_zero_point: int) -> bytes:
    """One MatMulInteger node; B is an initializer when given, else a graph input named 'B'."""
    inputs = [helper.make_tensor_value_info("A", TensorProto.UINT8, ["M", K])]
    initializers = [numpy_helper.from_array(np.array(a_zero_point, dtype=np.uint8), "a_zp")]
    if B is None:
        inputs.append(helper.make_tensor_value_info("B", TensorProto.INT8, [K, N]))
    else:
        initializers.append(numpy_helper.from_array(B, "B"))
    node = helper.make_node("MatMulInteger", ["A", "B", "a_zp"], ["Y"])
    graph = helper.make_graph([node], "matmulinteger", inputs,
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, ["M", N])],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def random_weights(rng: np.random.Generator, fmt: str, K: int, N: int) -> np.ndarray:
    limit = WEIGHT_LIMITS[fmt]
    B = rng.integers(-limit, limit + 1, size=(K, N))
    if fmt == "pair128":
        # Draw |w[k]| then give w[k+1] a magnitude that fits the pair budget of 128.
        even = B[0::2]
        budget = np.minimum(128 - np.abs(even), 127)
        odd = rng.integers(-budget, budget + 1)[: B[1::2].shape[0]]
        B[1::2] = odd
    return B.astype(np.int8)


def adversarial_weights(fmt: str, K: int, N: int) -> np.ndarray:
    """Columns that maximise |a0*w0 + a1*w1| for A = 255, repeated across N.

    For pair128 the columns sit right at the budget (e.g. 64+64, 127+1), and one pattern,
    [1, 127, 127, 1, ...], obeys the budget on even pairs but exceeds it on odd pairs (k odd,
    k+1), which exposes a kernel that paired rows differently than documented.
    """
    limit = WEIGHT_LIMITS[fmt]
    if fmt == "pair128":
        pair_patterns = [(64, 64), (-64, -64), (127, 1), (-1, -127), (1, 127), (-127, -1)]
        columns = [np.tile(p, K // 2 + 1)[:K] for p in pair_patterns]
        columns.append(np.tile([1, 127, 127, 1], K // 4 + 1)[:K])  # odd pairs sum to 254
        columns.append(np.tile([-1, -127, -127, -1], K // 4 + 1)[:K])
    else:
        columns = [np.full(K, limit), np.full(K, -limit),
                   np.tile([limit, limit, -limit, -limit], K // 4 + 1)[:K]]
    columns = np.stack(columns, axis=1)
    B = np.tile(columns, (1, N // columns.shape[1] + 1))[:, :N]
    if fmt == "pair128":
        assert pair_budget_ok(B), "adversarial pair128 weights violate their own constraint"
    return B.astype(np.int8)


def pair_budget_ok(B: np.ndarray) -> bool:
    """True when |B[k, n]| + |B[k+1, n]| <= 128 for every even k (a trailing odd row is alone)."""
    magnitude = np.abs(B.astype(np.int64))
    rows = magnitude.shape[0] - magnitude.shape[0] % 2
    return bool(np.all(magnitude[0:rows:2] + magnitude[1:rows:2] <= 128))


def run_case(fmt: str, inputs: str, b_source: str, zp: int, M: int, K: int, N: int,
             rng: np.random.Generator, given: np.ndarray | None = None) -> CaseResult:
    if given is not None:
        B = given
        A = (np.full((M, K), 255, dtype=np.uint8) if inputs == "adversarial"
             else rng.integers(0, 256, size=(M, K), dtype=np.uint8))
    elif inputs == "adversarial":
        A = np.full((M, K), 255, dtype=np.uint8)
        B = adversarial_weights(fmt, K, N)
    else:
        A = rng.integers(0, 256, size=(M, K), dtype=np.uint8)
        B = random_weights(rng, fmt, K, N)
    if fmt == "pair128":
        assert pair_budget_ok(B)
    assert np.abs(B.astype(np.int64)).max() <= WEIGHT_LIMITS.get(fmt, 127)

    as_initializer = b_source == "initializer"
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(build_model(B if as_initializer else None, K, N, zp),
                                   options, providers=["CPUExecutionProvider"])
    feeds = {"A": A} if as_initializer else {"A": A, "B": B}
    got = session.run(None, feeds)[0].astype(np.int64)
    # float64 BLAS is exact here (|sums| < 2**53) and much faster than numpy's int64 matmul,
    # which matters under qemu.
    assert K * 255 * 128 < 2**53
    want = ((A.astype(np.float64) - zp) @ B.astype(np.float64)).astype(np.int64)
    error = np.abs(got - want)
    return CaseResult(fmt, inputs, b_source, zp, M, K, N, bool(error.max() == 0),
                      int(error.max()), int(np.count_nonzero(error)))


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="int7,int8,pair128",
                        help="comma list of weight formats: int7, int8, pair128")
    parser.add_argument("--inputs", default="adversarial,random",
                        help="comma list: adversarial (A=255, extreme columns), random")
    parser.add_argument("--b-source", default="initializer,input",
                        help="comma list: initializer (prepacked B) and/or input (B fed at run)")
    parser.add_argument("--a-zero-points", type=parse_ints, default=[128, 0])
    parser.add_argument("--M", type=parse_ints, default=[1, 7, 32])
    parser.add_argument("--K", type=parse_ints, default=[64, 768, 3072])
    parser.add_argument("--N", type=parse_ints, default=[64, 768])
    parser.add_argument("--weights-file", help="int8 .npy of shape [K, N], for --weights file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="", help="tag printed with the results (e.g. qemu -cpu)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    print(f"label={args.label!r} onnxruntime={ort.__version__} numpy={np.__version__}")
    print(f"cpu features (CPUID via numpy): {cpu_features()}")
    rng = np.random.default_rng(args.seed)
    given = np.load(args.weights_file).astype(np.int8) if args.weights_file else None
    if given is not None:
        args.K, args.N = [given.shape[0]], [given.shape[1]]
    results = []
    grid = itertools.product(args.weights.split(","), args.inputs.split(","),
                             args.b_source.split(","), args.a_zero_points,
                             args.M, args.K, args.N)
    for fmt, inputs, b_source, zp, M, K, N in grid:
        result = run_case(fmt, inputs, b_source, zp, M, K, N, rng, given if fmt == "file" else None)
        results.append(result)
        print(f"{fmt:8} {inputs:11} B={b_source:11} zp={zp:3} M={M:2} K={K:4} N={N:3} "
              f"exact={result.exact!s:5} max_abs_err={result.max_abs_error} "
              f"wrong={result.wrong_outputs}/{M * N}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"label": args.label, "onnxruntime": ort.__version__,
                       "cpu_features": cpu_features(),
                       "results": [asdict(r) for r in results]}, f, indent=1)
    inexact = [r for r in results if not r.exact]
    print(f"SUMMARY label={args.label!r}: {len(results) - len(inexact)}/{len(results)} exact")
    return 1 if inexact else 0


if __name__ == "__main__":
    sys.exit(main())
