"""Composable gradient transformations."""

from optiquant.optim.transform.adam import (
    ScaleByAdamaxState,
    ScaleByAdamState,
    ScaleByNadamState,
    scale_by_adam,
    scale_by_adamax,
    scale_by_nadam,
    scale_by_radam,
)
from optiquant.optim.transform.clip import clip_by_value, clip_grad_norm
from optiquant.optim.transform.lion import ScaleByLionState, scale_by_lion
from optiquant.optim.transform.momentum import TraceState, trace
from optiquant.optim.transform.rms import (
    ScaleByRmsState,
    ScaleByRssState,
    ScaleByRStdDevState,
    scale_by_rms,
    scale_by_rss,
    scale_by_stddev,
)
from optiquant.optim.transform.scale import (
    ScaleByScheduleState,
    flip_sign,
    scale,
    scale_by_schedule,
)
from optiquant.optim.transform.weight_decay import add_decayed_weights

maximize = flip_sign

__all__ = [
    "ScaleByAdamState",
    "ScaleByAdamaxState",
    "ScaleByLionState",
    "ScaleByNadamState",
    "ScaleByRStdDevState",
    "ScaleByRmsState",
    "ScaleByRssState",
    "ScaleByScheduleState",
    "TraceState",
    "add_decayed_weights",
    "clip_by_value",
    "clip_grad_norm",
    "flip_sign",
    "maximize",
    "scale",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_lion",
    "scale_by_nadam",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_schedule",
    "scale_by_stddev",
    "trace",
]
