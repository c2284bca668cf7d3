"""InterLUDE+ : InterLUDE's fusion and delta-consistency loss on a FreeMatch base."""

from __future__ import annotations

from pydantic import Field

from interlude.algorithms.base import register_algorithm
from interlude.algorithms.freematch import FreeMatch, FreeMatchOptions
from interlude.algorithms.interlude import DeltaConsistency, DeltaConsistencyOptions


class InterLUDEPlusOptions(DeltaConsistencyOptions, FreeMatchOptions):
    """InterLUDE+ (Huang et al.): InterLUDE's options on FreeMatch's."""

    lambda_ent: float = Field(0.05, ge=0, le=1e4)
    """Weight of the self-adaptive fairness term (0.05 in the InterLUDE+ paper)."""


@register_algorithm("interlude_plus", InterLUDEPlusOptions)
class InterLUDEPlus(DeltaConsistency, FreeMatch):
    """L = L_sup + lambda_u L_SAT + lambda_ent L_SAF + lambda_dc L_DC, with embedding fusion."""
