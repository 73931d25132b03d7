"""The table of bad calls: every one must raise ValueError or TypeError with a
message naming the function and the argument.

Shared by ``test_errors.py`` (one pytest case per row) and by this file run
as a script, which executes the whole table in a child process and prints
one JSON line per call: a call that crashes the interpreter (a segfault in
the kernels) then fails a test instead of killing pytest.

    python tests/bad_calls.py        # prints {"case": ..., "impl": ..., "ok": ..., "detail": ...}
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

import pyconv
import pyconv.reference

BIG = 2**40


def X(*shape: int, dtype: Any = np.float32) -> np.ndarray:
    return np.ones(shape, dtype)


def x4() -> np.ndarray:  # (1, 3, 6, 6) input
    return X(1, 3, 6, 6)


def w4() -> np.ndarray:  # (2, 3, 3, 3) weight
    return X(2, 3, 3, 3)


@dataclass(frozen=True)
class Case:
    id: str
    op: str                                   # "conv2d", "conv_output_shape", "plan",
                                              # "depthwise_conv2d" or "separable_conv2d"
    make: Callable[[], Tuple[tuple, Dict[str, Any]]]  # -> (args, kwargs), built lazily
    exc: type
    fragments: Tuple[str, ...] = ()           # must all appear in the message
    pyconv_only: bool = False                 # uses algo= / out=, which the reference lacks


def conv(case_id: str, args: Callable[[], tuple], exc: type, *fragments: str,
         pyconv_only: bool = False, **kwargs: Any) -> Case:
    return Case(case_id, "conv2d", lambda: (args(), kwargs), exc, fragments, pyconv_only)


def shape(case_id: str, xs: Any, ws: Any, exc: type, *fragments: str, op: str = "conv_output_shape",
          **kwargs: Any) -> Case:
    return Case(case_id, op, lambda: ((xs, ws), kwargs), exc, fragments)


def std() -> tuple:
    return x4(), w4()


def dwconv(case_id: str, args: Callable[[], tuple], exc: type, *fragments: str, **kwargs: Any) -> Case:
    return Case(case_id, "depthwise_conv2d", lambda: (args(), kwargs), exc, fragments)


def sepconv(case_id: str, args: Callable[[], tuple], exc: type, *fragments: str, **kwargs: Any) -> Case:
    return Case(case_id, "separable_conv2d", lambda: (args(), kwargs), exc, fragments)


def dw_std() -> tuple:  # (1, 3, 6, 6) input, multiplier-2 depthwise weight (6, 1, 3, 3)
    return x4(), X(6, 1, 3, 3)


def sep_std() -> tuple:  # ... then a 1x1 weight from the 6 channels to 4
    return x4(), X(6, 1, 3, 3), X(4, 6, 1, 1)


V, T = ValueError, TypeError

CASES: List[Case] = [
    # ---- ndim
    conv("x_2d", lambda: (X(6, 6), w4()), V, "input", "4-D"),
    conv("x_5d", lambda: (X(1, 1, 3, 6, 6), w4()), V, "input", "4-D"),
    conv("x_scalar", lambda: (np.float32(1.0), w4()), V, "input"),
    conv("weight_3d", lambda: (x4(), X(2, 3, 3)), V, "weight", "4-D"),
    conv("weight_5d", lambda: (x4(), X(2, 3, 3, 3, 1)), V, "weight", "4-D"),
    conv("weight_2d_nhwc", lambda: (X(1, 6, 6, 3), X(3, 3)), V, "weight", layout="NHWC"),
    # ---- channels and groups
    conv("channel_mismatch", lambda: (X(1, 3, 5, 5), X(2, 4, 3, 3)), V,
         "input has 3 channels but weight expects 4 (groups=1)"),
    conv("channel_mismatch_nhwc", lambda: (X(1, 5, 5, 3), X(3, 3, 4, 2)), V,
         "input has 3 channels but weight expects 4 (groups=1)", layout="NHWC"),
    conv("channel_mismatch_unbatched", lambda: (X(3, 5, 5), X(2, 4, 3, 3)), V, "3 channels", "expects 4"),
    conv("channel_mismatch_groups", lambda: (X(1, 4, 5, 5), X(4, 1, 3, 3)), V,
         "input has 4 channels but weight expects 2 (groups=2)", groups=2),
    conv("groups_not_dividing_c_in", lambda: (X(1, 4, 5, 5), X(3, 1, 3, 3)), V, "groups=3", "4",
         groups=3),
    conv("groups_not_dividing_c_out", lambda: (X(1, 4, 5, 5), X(3, 2, 3, 3)), V, "groups=2", "3",
         groups=2),
    conv("groups_0", std, V, "groups", groups=0),
    conv("groups_negative", std, V, "groups", groups=-1),
    conv("groups_float", std, T, "groups", groups=1.0),
    conv("groups_bool", std, T, "groups", groups=True),
    conv("groups_str", std, T, "groups", groups="1"),
    conv("groups_none", std, T, "groups", groups=None),
    # ---- stride
    conv("stride_0", std, V, "stride", stride=0),
    conv("stride_negative", std, V, "stride", stride=-2),
    conv("stride_pair_0", std, V, "stride", stride=(1, 0)),
    conv("stride_float", std, T, "stride", stride=2.0),
    conv("stride_bool", std, T, "stride", stride=True),
    conv("stride_str", std, T, "stride", stride="2"),
    conv("stride_none", std, T, "stride", stride=None),
    conv("stride_triple", std, V, "stride", stride=(1, 1, 1)),
    conv("stride_single", std, V, "stride", stride=(1,)),
    conv("stride_float_pair", std, T, "stride", stride=(1, 1.5)),
    # ---- dilation
    conv("dilation_0", std, V, "dilation", dilation=0),
    conv("dilation_pair_0", std, V, "dilation", dilation=(2, 0)),
    conv("dilation_negative", std, V, "dilation", dilation=-1),
    conv("dilation_float", std, T, "dilation", dilation=1.5),
    conv("dilation_triple", std, V, "dilation", dilation=(1, 1, 1)),
    # ---- padding
    conv("padding_negative", std, V, "padding", padding=-1),
    conv("padding_pair_negative", std, V, "padding", padding=(0, -1)),
    conv("padding_pairs_negative", std, V, "padding", padding=((0, 0), (-1, 0))),
    conv("padding_bad_string", std, V, "padding", "full", padding="full"),
    conv("padding_empty_string", std, V, "padding", padding=""),
    conv("padding_triple", std, V, "padding", padding=(1, 1, 1)),
    conv("padding_three_pairs", std, V, "padding", padding=((1, 1), (1, 1), (1, 1))),
    conv("padding_pair_of_triples", std, V, "padding", padding=((1, 1, 1), (1, 1))),
    conv("padding_mixed", std, V, "padding", padding=((1, 1), 1)),
    conv("padding_float", std, T, "padding", padding=1.5),
    conv("padding_none", std, T, "padding", padding=None),
    conv("padding_bool", std, T, "padding", padding=True),
    # ---- empty output
    conv("kernel_larger_than_input", lambda: (X(1, 3, 4, 4), X(2, 3, 5, 5)), V, "empty"),
    conv("kernel_larger_than_padded_input", lambda: (X(1, 3, 4, 2), X(2, 3, 3, 5)), V, "empty",
         padding=(0, 1)),
    conv("dilated_kernel_larger", std, V, "empty", dilation=3),
    conv("kernel_larger_nhwc", lambda: (X(2, 2, 3), X(3, 3, 3, 1)), V, "empty", layout="NHWC"),
    # ---- zero-size dimensions
    conv("weight_zero_c_out", lambda: (x4(), X(0, 3, 3, 3)), V, "weight"),
    conv("weight_zero_kh", lambda: (x4(), X(2, 3, 0, 3)), V, "weight"),
    conv("weight_zero_kw_nhwc", lambda: (X(1, 6, 6, 3), X(3, 0, 3, 2)), V, "weight", layout="NHWC"),
    conv("weight_zero_c_in", lambda: (X(1, 0, 6, 6), X(2, 0, 3, 3)), V, "input"),
    conv("input_zero_h", lambda: (X(1, 3, 0, 6), w4()), V, "input"),
    conv("input_zero_w_unbatched", lambda: (X(3, 6, 0), w4()), V, "input"),
    # ---- bias
    conv("bias_wrong_length", lambda: (x4(), w4(), X(3)), V, "bias", "(2,)"),
    conv("bias_2d", lambda: (x4(), w4(), X(2, 1)), V, "bias"),
    conv("bias_scalar", lambda: (x4(), w4(), np.float32(1.0)), V, "bias"),
    conv("bias_complex", lambda: (x4(), w4(), X(2, dtype=np.complex64)), T, "bias", "complex"),
    # ---- layout and activation
    conv("layout_bad", std, V, "layout", "NCWH", layout="NCWH"),
    conv("layout_empty", std, V, "layout", layout=""),
    conv("layout_int", std, T, "layout", layout=0),
    conv("layout_none", std, T, "layout", layout=None),
    conv("activation_bad", std, V, "activation", "sigmoid", activation="sigmoid"),
    conv("activation_empty", std, V, "activation", activation=""),
    conv("activation_int", std, T, "activation", activation=1),
    conv("activation_bool", std, T, "activation", activation=True),
    # ---- dtypes and array-likes
    conv("x_complex", lambda: (X(1, 3, 6, 6, dtype=np.complex128), w4()), T, "x", "complex"),
    conv("weight_complex", lambda: (x4(), X(2, 3, 3, 3, dtype=np.complex64)), T, "weight", "complex"),
    conv("x_object", lambda: (np.ones((1, 3, 6, 6), dtype=object), w4()), T, "x", "object"),
    conv("weight_object", lambda: (x4(), np.array([[[[1.0]]], [[[None]]]], dtype=object)), T,
         "weight", "object"),
    conv("x_strings", lambda: (np.full((1, 3, 6, 6), "a"), w4()), T, "x"),
    conv("x_bytes", lambda: (np.full((1, 3, 6, 6), b"a"), w4()), T, "x"),
    conv("x_none", lambda: (None, w4()), T, "x"),
    conv("weight_none", lambda: (x4(), None), T, "weight"),
    conv("x_ragged", lambda: ([[1.0, 2.0], [3.0]], w4()), T, "x"),
    conv("x_dict", lambda: ({"a": 1}, w4()), T, "x"),
    # ---- sizes that overflow 64-bit arithmetic (nothing may be allocated)
    conv("padding_overflow", std, V, "too large", padding=2**62),
    conv("padding_huge", std, V, "too large", padding=BIG),
    shape("shape_overflow_all", (BIG, BIG, BIG, BIG), (BIG, 1, 1, 1), V, "conv_output_shape:",
          "too large", groups=BIG),
    shape("shape_overflow_input", (1, 1, 2**62, 2**62), (1, 1, 1, 1), V, "conv_output_shape:", "too large"),
    shape("shape_overflow_output", (2**31, 1, 2**31, 2**31), (2**31, 1, 1, 1), V, "too large"),
    shape("shape_overflow_weight", (1, 2**32, 4, 4), (2**32, 2**32, 1, 1), V, "too large"),
    shape("shape_beyond_int64", (1, 1, 2**64, 4), (1, 1, 1, 1), V, "too large"),
    shape("plan_overflow", (BIG, BIG, BIG, BIG), (BIG, BIG, 1, 1), V, "plan:", "too large", op="plan"),
    shape("plan_overflow_nhwc", (2**33, 2**33, 2**33, 3), (1, 1, 3, 2**20), V, "plan:", "too large",
          op="plan", layout="NHWC"),
    # ---- shape functions' own arguments
    shape("shape_negative", (1, -3, 6, 6), (2, -3, 3, 3), V, "conv_output_shape:"),
    shape("shape_float_entry", (1, 3, 6.0, 6), (2, 3, 3, 3), T, "conv_output_shape:", "shape"),
    shape("shape_string", "1,3,6,6", (2, 3, 3, 3), T, "conv_output_shape:", "shape"),
    shape("shape_int", 6, (2, 3, 3, 3), T, "conv_output_shape:", "shape"),
    shape("shape_2d", (6, 6), (2, 3, 3, 3), V, "conv_output_shape:", "input"),
    shape("shape_weight_3d", (1, 3, 6, 6), (2, 3, 3), V, "conv_output_shape:", "weight"),
    shape("shape_mismatch", (1, 3, 6, 6), (2, 4, 3, 3), V,
          "conv_output_shape: input has 3 channels but weight expects 4 (groups=1)"),
    shape("shape_bad_layout", (1, 3, 6, 6), (2, 3, 3, 3), V, "conv_output_shape:", "layout", layout="NCDHW"),
    shape("plan_mismatch", (1, 3, 6, 6), (2, 4, 3, 3), V, "plan:", "3 channels", op="plan"),
    shape("plan_dtype_int", (1, 3, 6, 6), (2, 3, 3, 3), V, "plan:", "dtype", op="plan", dtype="int8"),
    shape("plan_dtype_complex", (1, 3, 6, 6), (2, 3, 3, 3), V, "plan:", "dtype", op="plan",
          dtype=np.complex64),
    shape("plan_dtype_unknown", (1, 3, 6, 6), (2, 3, 3, 3), T, "plan:", "dtype", op="plan",
          dtype="float33"),
    shape("plan_bad_layout", (1, 3, 6, 6), (2, 3, 3, 3), T, "plan:", "layout", op="plan", layout=4),
    # ---- pyconv-only arguments
    conv("algo_unknown", std, V, "algo", "winograd", algo="winograd", pyconv_only=True),
    conv("algo_int", std, T, "algo", algo=0, pyconv_only=True),
    conv("out_list", std, T, "out", out=[0.0], pyconv_only=True),
    conv("out_wrong_shape", std, V, "out", "shape", out=np.zeros((1, 2, 4, 5), np.float32),
         pyconv_only=True),
    # ---- algo="depthwise" serves groups == C_in only
    conv("algo_depthwise_dense", std, V, "algo", "depthwise", algo="depthwise", pyconv_only=True),
    conv("algo_depthwise_grouped", lambda: (X(1, 4, 6, 6), X(4, 2, 3, 3)), V, "algo", "depthwise",
         groups=2, algo="depthwise", pyconv_only=True),
    conv("algo_depthwise_dense_nhwc", lambda: (X(1, 6, 6, 3), X(3, 3, 3, 2)), V, "algo", "depthwise",
         layout="NHWC", algo="depthwise", pyconv_only=True),
    # ---- depthwise_conv2d: the weight's form
    dwconv("dw_weight_two_channels_per_filter", lambda: (X(1, 4, 6, 6), X(4, 2, 3, 3)), V, "weight",
           "(4, 2, 3, 3)"),
    dwconv("dw_weight_dense", lambda: (x4(), X(6, 3, 3, 3)), V, "weight", "(6, 3, 3, 3)"),
    dwconv("dw_weight_two_channels_nhwc", lambda: (X(1, 6, 6, 4), X(3, 3, 2, 4)), V, "weight",
           "(3, 3, 2, 4)", layout="NHWC"),
    dwconv("dw_weight_nchw_form_in_nhwc", lambda: (X(1, 6, 6, 3), X(6, 1, 3, 3)), V, "weight",
           layout="NHWC"),
    dwconv("dw_multiplier_mismatch", lambda: (x4(), X(4, 1, 3, 3)), V, "weight", "4 filters", "3 input"),
    dwconv("dw_fewer_filters_than_channels", lambda: (X(1, 4, 6, 6), X(2, 1, 3, 3)), V, "weight",
           "2 filters", "4 input"),
    dwconv("dw_multiplier_mismatch_nhwc", lambda: (X(1, 6, 6, 4), X(3, 3, 1, 6)), V, "weight",
           "6 filters", "4 input", layout="NHWC"),
    dwconv("dw_multiplier_mismatch_unbatched", lambda: (X(3, 6, 6), X(5, 1, 3, 3)), V, "weight",
           "5 filters", "3 input"),
    dwconv("dw_zero_filters", lambda: (x4(), X(0, 1, 3, 3)), V, "weight"),
    dwconv("dw_zero_input_channels", lambda: (X(1, 0, 6, 6), X(3, 1, 3, 3)), V, "0 input"),
    # ---- depthwise_conv2d: ndim
    dwconv("dw_x_2d", lambda: (X(6, 6), X(3, 1, 3, 3)), V, "input", "4-D"),
    dwconv("dw_x_5d", lambda: (X(1, 1, 3, 6, 6), X(3, 1, 3, 3)), V, "input", "4-D"),
    dwconv("dw_x_scalar", lambda: (np.float32(1.0), X(3, 1, 3, 3)), V, "input"),
    dwconv("dw_weight_3d", lambda: (x4(), X(3, 3, 3)), V, "weight", "4-D"),
    dwconv("dw_weight_5d", lambda: (x4(), X(3, 1, 3, 3, 1)), V, "weight", "4-D"),
    dwconv("dw_weight_2d_nhwc", lambda: (X(1, 6, 6, 3), X(3, 3)), V, "weight", "4-D", layout="NHWC"),
    # ---- depthwise_conv2d: other arguments
    dwconv("dw_layout_bad", dw_std, V, "layout", "NCWH", layout="NCWH"),
    dwconv("dw_layout_int", dw_std, T, "layout", layout=1),
    dwconv("dw_activation_bad", dw_std, V, "activation", "gelu", activation="gelu"),
    dwconv("dw_activation_int", dw_std, T, "activation", activation=2),
    dwconv("dw_stride_0", dw_std, V, "stride", stride=0),
    dwconv("dw_stride_pair_0", dw_std, V, "stride", stride=(2, 0)),
    dwconv("dw_stride_float", dw_std, T, "stride", stride=1.0),
    dwconv("dw_stride_triple", dw_std, V, "stride", stride=(1, 1, 1)),
    dwconv("dw_dilation_0", dw_std, V, "dilation", dilation=0),
    dwconv("dw_dilation_str", dw_std, T, "dilation", dilation="2"),
    dwconv("dw_padding_bad_string", dw_std, V, "padding", "full", padding="full"),
    dwconv("dw_padding_negative", dw_std, V, "padding", padding=-1),
    dwconv("dw_padding_pairs_negative", dw_std, V, "padding", padding=((0, -1), (0, 0))),
    dwconv("dw_padding_float", dw_std, T, "padding", padding=0.5),
    dwconv("dw_padding_triple", dw_std, V, "padding", padding=(1, 1, 1)),
    dwconv("dw_empty_output", lambda: (X(1, 3, 2, 6), X(3, 1, 3, 3)), V, "empty"),
    dwconv("dw_bias_wrong_length", lambda: (x4(), X(6, 1, 3, 3), X(3)), V, "bias", "(6,)"),
    dwconv("dw_bias_2d", lambda: (x4(), X(6, 1, 3, 3), X(6, 1)), V, "bias"),
    dwconv("dw_x_none", lambda: (None, X(3, 1, 3, 3)), T, "x"),
    dwconv("dw_weight_none", lambda: (x4(), None), T, "weight"),
    dwconv("dw_x_complex", lambda: (X(1, 3, 6, 6, dtype=np.complex64), X(3, 1, 3, 3)), T, "x", "complex"),
    dwconv("dw_weight_object", lambda: (x4(), np.ones((3, 1, 3, 3), dtype=object)), T, "weight", "object"),
    dwconv("dw_bias_complex", lambda: (x4(), X(3, 1, 3, 3), X(3, dtype=np.complex128)), T, "bias",
           "complex"),
    dwconv("dw_padding_overflow", dw_std, V, "too large", padding=2**62),
    # ---- separable_conv2d: the pointwise weight
    sepconv("sep_pointwise_3x3", lambda: (x4(), X(6, 1, 3, 3), X(4, 6, 3, 3)), V, "pointwise_weight", "1x1"),
    sepconv("sep_pointwise_1x2", lambda: (x4(), X(6, 1, 3, 3), X(4, 6, 1, 2)), V, "pointwise_weight", "1x1"),
    sepconv("sep_pointwise_3x3_nhwc", lambda: (X(1, 6, 6, 3), X(3, 3, 1, 3), X(3, 3, 3, 4)), V,
            "pointwise_weight", "1x1", layout="NHWC"),
    sepconv("sep_pointwise_wrong_channels", lambda: (x4(), X(6, 1, 3, 3), X(4, 5, 1, 1)), V,
            "pointwise_weight", "5", "6"),
    sepconv("sep_pointwise_reads_c_in", lambda: (x4(), X(6, 1, 3, 3), X(4, 3, 1, 1)), V,
            "pointwise_weight", "3", "6"),
    sepconv("sep_pointwise_wrong_channels_nhwc", lambda: (X(1, 6, 6, 3), X(3, 3, 1, 6), X(1, 1, 3, 4)),
            V, "pointwise_weight", "3", "6", layout="NHWC"),
    sepconv("sep_pointwise_3d", lambda: (x4(), X(6, 1, 3, 3), X(4, 6, 1)), V, "pointwise_weight", "4-D"),
    sepconv("sep_pointwise_none", lambda: (x4(), X(6, 1, 3, 3), None), T, "pointwise_weight"),
    sepconv("sep_pointwise_complex", lambda: (x4(), X(6, 1, 3, 3), X(4, 6, 1, 1, dtype=np.complex64)), T,
            "pointwise_weight", "complex"),
    # ---- separable_conv2d: bias (C_out of the pointwise step) and the depthwise weight
    sepconv("sep_bias_depthwise_length", lambda: sep_std() + (X(6),), V, "bias", "(4,)"),
    sepconv("sep_bias_wrong_length", lambda: sep_std() + (X(5),), V, "bias", "(4,)"),
    sepconv("sep_bias_2d", lambda: sep_std() + (X(4, 1),), V, "bias"),
    sepconv("sep_bias_complex", lambda: sep_std() + (X(4, dtype=np.complex64),), T, "bias", "complex"),
    sepconv("sep_depthwise_dense", lambda: (x4(), X(6, 3, 3, 3), X(4, 6, 1, 1)), V, "depthwise_weight"),
    sepconv("sep_depthwise_multiplier_mismatch", lambda: (x4(), X(4, 1, 3, 3), X(4, 4, 1, 1)), V,
            "depthwise_weight", "4 filters"),
    sepconv("sep_depthwise_3d", lambda: (x4(), X(6, 3, 3), X(4, 6, 1, 1)), V, "depthwise_weight", "4-D"),
    sepconv("sep_depthwise_none", lambda: (x4(), None, X(4, 6, 1, 1)), T, "depthwise_weight"),
    # ---- separable_conv2d: other arguments
    sepconv("sep_x_2d", lambda: (X(6, 6), X(6, 1, 3, 3), X(4, 6, 1, 1)), V, "input", "4-D"),
    sepconv("sep_x_none", lambda: (None, X(6, 1, 3, 3), X(4, 6, 1, 1)), T, "x"),
    sepconv("sep_layout_bad", sep_std, V, "layout", layout="NWHC"),
    sepconv("sep_activation_bad", sep_std, V, "activation", "tanh", activation="tanh"),
    sepconv("sep_activation_int", sep_std, T, "activation", activation=1),
    sepconv("sep_stride_0", sep_std, V, "stride", stride=0),
    sepconv("sep_stride_float", sep_std, T, "stride", stride=2.5),
    sepconv("sep_dilation_negative", sep_std, V, "dilation", dilation=-1),
    sepconv("sep_padding_bad_string", sep_std, V, "padding", padding="full"),
    sepconv("sep_padding_negative", sep_std, V, "padding", padding=(-1, 0)),
    sepconv("sep_empty_output", lambda: (X(1, 3, 6, 2), X(6, 1, 3, 3), X(4, 6, 1, 1)), V, "empty"),
]


def implementations(case: Case) -> List[Tuple[str, Callable[..., Any]]]:
    """(name, function) pairs a case applies to: pyconv, and the reference
    twin where there is one (the two share argument normalisation)."""
    if case.op == "conv2d":
        impls = [("pyconv", pyconv.conv2d)]
        if not case.pyconv_only:
            impls.append(("reference", pyconv.reference.conv2d))
        return impls
    if case.op == "conv_output_shape":
        return [("pyconv", pyconv.conv_output_shape), ("reference", pyconv.reference.conv_output_shape)]
    if case.op in ("depthwise_conv2d", "separable_conv2d"):
        return [("pyconv", getattr(pyconv, case.op)), ("reference", getattr(pyconv.reference, case.op))]
    return [("pyconv", pyconv.plan)]


def check(case: Case, fn: Callable[..., Any]) -> Tuple[bool, str]:
    """(passed, what happened) for one call of the table."""
    args, kwargs = case.make()
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any other class is the failure we report
        msg = str(exc)
        detail = f"{type(exc).__name__}: {msg}"
        if not isinstance(exc, case.exc) or isinstance(exc, (MemoryError, OverflowError)):
            return False, f"expected {case.exc.__name__}, got {detail}"
        prefix = fn.__module__.startswith("pyconv.reference") and "reference." or ""
        wanted = (prefix + case.op + ":",) + case.fragments
        missing = [f for f in wanted if f not in msg]
        if missing:
            return False, f"message lacks {missing}: {detail}"
        return True, detail
    return False, f"expected {case.exc.__name__}, returned {type(result).__name__}"


def main() -> int:
    import faulthandler

    faulthandler.enable()
    for case in CASES:
        for impl, fn in implementations(case):
            # announce first: if the call crashes, the parent sees which one
            print(json.dumps({"case": case.id, "impl": impl, "start": True}), flush=True)
            ok, detail = check(case, fn)
            print(json.dumps({"case": case.id, "impl": impl, "ok": ok, "detail": detail}), flush=True)
    print(json.dumps({"done": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
