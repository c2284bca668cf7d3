"""InterLUDE+ : InterLUDE's fusion and delta-consistency loss on a FreeMatch base."""

from __future__ import annotations

from interlude.algorithms.freematch import FreeMatch
from interlude.algorithms.interlude import DeltaConsistency


class InterLUDEPlus(DeltaConsistency, FreeMatch):
    """L = L_sup + lambda_u L_SAT + lambda_ent L_SAF + lambda_dc L_DC, with embedding fusion."""

    name = "interlude_plus"
