"""The load bench's table, its warnings, and its verdict."""

from __future__ import annotations

# lost: frames that never arrived; dropped@start: caller frames a bot dropped before its model
# session was ready; discarded@barge: bot frames it dropped because the caller barged in.
COLUMNS = ("calls  up p50/p99 ms  down p50/p99 ms  barge p50/p99 ms  1st audio p50/p99  lost up/down"
            "  dropped@start  discarded@barge  svc CPU%  %/call  MB/call  gen CPU%  other%")


def _pair(summary: dict) -> str:
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    return f"{fmt(summary['p50'])}/{fmt(summary['p99'])}"


def row(step: dict) -> str:
    cpu, rss, frames = step["service_cpu"], step["service_rss"], step["frames"]

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    return (
        f"{step['calls']:5d}  {_pair(step['caller_to_model_ms']):>14}  {_pair(step['model_to_caller_ms']):>15}"
        f"  {_pair(step['barge_in_ms']):>16}  {_pair(step['first_audio_ms']):>17}"
        f"  {frames['caller_lost']:>5d}/{frames['model_lost']:<6d}  {frames['caller_dropped_at_start']:>13d}"
        f"  {frames['model_discarded_on_barge_in']:>15d}  {fmt(cpu['core_pct'], '8.1f')}"
        f"  {fmt(cpu['pct_per_call'], '6.3f')}  {fmt(rss['mb_per_call'], '7.3f')}  {step['loadgen_cpu_pct']:8.1f}"
        f"  {step['machine_load']['other_cpu_pct']:6.1f}"
    )


def disturbed(step: dict) -> bool:
    """Whether other programs on this machine competed with the service enough to matter."""
    load = step["machine_load"]
    worst = load["service_core_other_max_pct"]
    return load["other_cpu_pct"] > 10 or load["steal_pct"] > 2 or (worst is not None and worst >= 25)


def warnings(step: dict) -> list[str]:
    """What makes this step's figures less trustworthy than they look."""
    found = []
    if disturbed(step):
        load = step["machine_load"]
        worst = load["service_core_other_max_pct"]
        found.append(f"other processes used {load['other_cpu_pct']}% of a core on average"
                     + ("" if worst is None else f", up to {worst}% of the service's core in 200 ms")
                     + f"; steal {load['steal_pct']}%")
    lag = step["loadgen_loop_lag_ms"]["p99"]
    if lag is not None and lag > 5:
        found.append(f"the load generator's loop ran up to {lag} ms late (p99): its timestamps are that coarse")
    return found


def print_profile(step: dict) -> None:
    found = step.get("profile")
    if not found:
        return
    print(f"  profile of the service at {step['calls']} calls ({found['samples']} busy samples); doing what:")
    for name, pct in found["where_pct"]:
        print(f"    {pct:5.1f}%  {name}")
    print("  functions, self time:")
    for name, pct in found["self_pct"][:10]:
        print(f"    {pct:5.1f}%  {name}")
    print("  by package (self): " + ", ".join(f"{name} {pct}%" for name, pct in found["package_self_pct"][:10]))


def verdict(steps: list[dict]) -> dict:
    """The largest step that passed: no lost frame, p99 <= 20 ms both ways, every call up."""
    passed = [s for s in steps if not s["stop_reasons"]]
    best = max(passed, key=lambda s: s["calls"], default=None)
    per_call = [s["service_cpu"]["calls_per_core"] for s in steps if s["service_cpu"]["calls_per_core"]]
    return {
        "max_calls_passed": best["calls"] if best else 0,
        "calls_per_core_extrapolated": per_call[-1] if per_call else None,
    }
