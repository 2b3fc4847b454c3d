"""What the fleet looks like to an operator: one flat row per agent and task.

The agents' stored reports (as :meth:`Registry.agent_statuses` returns them, or a
gateway's ``FleetStatus`` as plain data) turned into what ``fleet status`` prints and
the console shows: versions, traffic, escalation rate, fallbacks, drift, swaps, and
whether the agent is still reporting.
"""

from __future__ import annotations

OFFLINE_AFTER_REPORTS = 3
"""An agent whose reports stopped for this many of its report intervals is offline..."""
OFFLINE_AFTER_MIN_S = 30.0
"""...and never sooner than this (a short hiccup is not an outage)."""
DEFAULT_REPORT_INTERVAL_S = 10.0
"""Report interval assumed for agents that do not say theirs."""


def offline_after_s(agent: dict) -> float:
    """Seconds without a report after which ``agent`` counts as offline."""
    interval = float(agent.get("status_interval_s") or 0.0) or DEFAULT_REPORT_INTERVAL_S
    return max(OFFLINE_AFTER_REPORTS * interval, OFFLINE_AFTER_MIN_S)


def _drift(task: dict, detail: dict) -> dict:
    rows = int(detail.get("drift_rows", 0) or 0)
    min_rows = int(detail.get("drift_min_rows", 0) or 0)
    status = task.get("drift_status", "")
    if min_rows and rows < min_rows:
        status = "insufficient_data"
    return {"status": status, "psi": task.get("drift_psi", 0.0),
            "ks_pvalue": task.get("drift_ks_pvalue", 1.0), "rows": rows, "min_rows": min_rows}


def _swap(swap: dict) -> dict:
    return {"at": float(swap.get("at") or 0.0), "task": swap.get("name"),
            "kind": swap.get("kind"), "version": swap.get("version"),
            "ok": bool(swap.get("ok")), "reason": swap.get("reason", "")}


_LEDGER_FIELDS = ("kept", "queued", "queued_bytes", "uploaded", "evicted_age",
                  "evicted_space", "quarantined", "dropped")


def _ledger(agent: dict) -> dict | None:
    """The agent's hard-example counters (uint64 arrive as JSON strings), with the total
    evicted; None for an agent that keeps none."""
    ledger = agent.get("hard_examples")
    if not ledger:
        return None
    counts = {name: int(ledger.get(name, 0) or 0) for name in _LEDGER_FIELDS}
    counts["evicted"] = counts["evicted_age"] + counts["evicted_space"]
    return counts


def fleet_rows(agents: list[dict], now: float) -> list[dict]:
    """One flat record per agent and task (what ``fleet status`` shows, and its ``--json``).

    ``now`` (Unix seconds) decides which agents are offline.
    """
    rows = []
    for agent in agents:
        last = agent.get("last_swap") or {}
        last_seen = agent.get("last_seen")
        base = {
            "agent_id": agent.get("agent_id"),
            "labels": agent.get("labels", {}),
            "replica": agent.get("replica"),
            "last_seen": last_seen,
            "online": bool(last_seen) and now - float(last_seen) <= offline_after_s(agent),
            "last_swap": ({"name": last.get("name"), "version": last.get("version"),
                           "kind": last.get("kind"), "ok": bool(last.get("ok")),
                           "reason": last.get("reason", "")} if last.get("name") else None),
            "swap_history": [_swap(s) for s in agent.get("swap_history") or []],
            "hard_examples": _ledger(agent),
        }
        details = {d.get("name"): d for d in agent.get("diagnostics") or []}
        for task in agent.get("tasks") or [{}]:
            rows_n = int(task.get("rows", 0) or 0)
            escalated = int(task.get("escalated_rows", 0) or 0)
            detail = details.get(task.get("name"), {})
            rows.append({
                **base,
                "task": task.get("name"),
                "model_version": task.get("model_version"),
                "policy_version": task.get("policy_version"),
                "waiting_for": task.get("waiting_for", ""),
                "cloud_problem": task.get("cloud_problem", ""),
                "requests": int(task.get("requests", 0) or 0),
                "rows": rows_n,
                "escalation_rate": escalated / rows_n if rows_n else 0.0,
                "fallbacks": int(task.get("fallback_rows", 0) or 0),
                "fallbacks_by_reason": {k: int(v) for k, v in
                                        (detail.get("fallback_rows_by_reason") or {}).items()},
                "drift": _drift(task, detail),
            })
    return rows
