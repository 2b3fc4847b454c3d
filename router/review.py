"""Which rows a human should look at: the cloud was unsure too.

A policy with ``review_threshold`` sends a row to the gateway's review queue
when the cloud answered it and the cloud's own confidence (the policy's score
on the cloud's class scores) is below that threshold. The decision is made
here, when the cloud's answer is recorded, like every other routing reason;
the agent only marks the rows and hands them to its hard-example ledger with
the reason :data:`REVIEW`.
"""

from __future__ import annotations

import numpy as np

from edgecloud.router.policy import Policy
from edgecloud.router.scores import score_rows

REVIEW = "review"
"""The hard-example reason of a row that waits for a reviewer."""


def review_rows(policy: Policy, cloud_scores: np.ndarray,
                answered: np.ndarray | None = None) -> np.ndarray | None:
    """``bool [N]``: the rows of ``cloud_scores`` (``[N, K]``, the cloud's class scores)
    that need a reviewer, among those ``answered`` by the cloud (all when None); None when
    the policy asks for no review or no row needs one (the usual case)."""
    threshold = policy.review_threshold
    if threshold is None:
        return None
    confidence, _ = score_rows(policy, cloud_scores)
    review = confidence < threshold
    if answered is not None:
        review &= np.asarray(answered, dtype=bool)
    return review if review.any() else None
