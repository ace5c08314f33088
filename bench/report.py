"""Write a run's results: latest.json, a dated copy, a Markdown table and a PNG plot."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

TARGETS: list[tuple[str, str, str, float]] = [
    # (key, what, comparison, target)
    ("ratio_ours_to_floor", "PostgreSQL: ours / floor", "<=", 1.5),
    ("sqlite_ratio_ours_to_floor", "SQLite: ours / floor", "<=", 2.0),
    ("speedup_vs_naive", "speed-up over naive", ">=", 50.0),
    ("worker_peak_rss_mb", "worker peak RSS (MB)", "<", 300.0),
    ("submit_p95_ratio", "submit p95, everyone / one", "<=", 2.0),
    ("inbox_p95_ms", "inbox page p95 (ms)", "<", 50.0),
    ("unread_p95_ms", "unread count p95 (ms)", "<", 5.0),
    ("inbox_html_p95_ms", "inbox HTML page p95 (ms)", "<", 50.0),
    ("conversation_html_p95_ms", "conversation HTML page p95 (ms)", "<", 50.0),
    ("interactive_p95_ms_during_broadcast", "interactive p95 during broadcast (ms)", "<", 500.0),
]


def _met(value: Any, op: str, target: float) -> str:
    if value is None:
        return "not run"
    ok = {"<=": value <= target, "<": value < target, ">=": value >= target}[op]
    return "met" if ok else "MISSED"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _load_during(m: dict[str, Any]) -> str:
    d = m.get("load_avg_1min_during_run")
    if not d:
        return ""
    return f", 1-minute load during the run {d['min']}-{d['max']} (median {d['median']})"


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"# Fan-out benchmark, {res['size']:,} users ({res['started_at']})",
        "",
        f"Command: `{res['command']}`. Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB "
        f"RAM, PostgreSQL {m['postgresql']}, Redis {m['redis']}, SQLite {m['sqlite']}, Python "
        f"{m['python']}; load average at start {m['load_avg_at_start']}{_load_during(m)} (the "
        "machine is shared, so compare the ratios, measured in one run, more than the absolute "
        "times).",
        "",
        "## One broadcast to the whole country",
        "",
        "| approach | recipients | seconds | rows/s |",
        "|---|---:|---:|---:|",
        f"| floor (one INSERT ... SELECT), PostgreSQL | {_fmt(res['floor_rows'])} | "
        f"{_fmt(res['floor_s'])} | {_fmt(res.get('floor_rows_per_s'))} |",
        f"| ours (API -> Celery workers -> every row committed), PostgreSQL | "
        f"{_fmt(res['floor_rows'])} | {_fmt(res['ours_s'])} | {_fmt(res.get('ours_rows_per_s'))} |",
    ]
    if res.get("naive_s") is not None:
        lines += [
            f"| ours at the naive size, PostgreSQL | {_fmt(res.get('naive_rows'))} | "
            f"{_fmt(res['ours_at_naive_size_s'])} | "
            f"{_fmt(round(res['naive_rows'] / res['ours_at_naive_size_s']))} |",
            f"| naive (one flushed ORM INSERT per recipient), PostgreSQL | "
            f"{_fmt(res.get('naive_rows'))} | {_fmt(res['naive_s'])} | "
            f"{_fmt(res.get('naive_rows_per_s'))} |",
        ]
    if res.get("postman_s") is not None:
        lines.append(
            f"| django-postman 4.6 `pm_broadcast`, PostgreSQL | {_fmt(res['postman_size'])} | "
            f"{_fmt(res['postman_s'])} | {_fmt(res.get('postman_rows_per_s'))} |"
        )
    if res.get("sqlite_ours_s") is not None:
        lines += [
            f"| floor, SQLite | {_fmt(res.get('sqlite_rows'))} | {_fmt(res['sqlite_floor_s'])} | "
            f"{_fmt(round(res['sqlite_rows'] / res['sqlite_floor_s']))} |",
            f"| ours, SQLite (embedded default) | {_fmt(res.get('sqlite_rows'))} | "
            f"{_fmt(res['sqlite_ours_s'])} | "
            f"{_fmt(round(res['sqlite_rows'] / res['sqlite_ours_s']))} |",
        ]
    lines += [
        "",
        "## Latencies (ms)",
        "",
        "| what | p50 | p95 |",
        "|---|---:|---:|",
        f"| submit, 1 recipient (HTTP) | {_fmt(res.get('submit_p50_ms_one'))} | "
        f"{_fmt(res['submit_p95_ms_one'])} |",
        f"| submit, {res['size']:,} recipients (HTTP) | {_fmt(res.get('submit_p50_ms_size'))} | "
        f"{_fmt(res['submit_p95_ms_size'])} |",
        f"| inbox page, user with {_fmt(res.get('inbox_user_conversations'))} conversations "
        f"(server) | {_fmt(res.get('inbox_p50_ms'))} | {_fmt(res['inbox_p95_ms'])} |",
        f"| unread count, same user (server) | {_fmt(res.get('unread_p50_ms'))} | "
        f"{_fmt(res['unread_p95_ms'])} |",
        f"| inbox HTML page, same user (server) | {_fmt(res.get('inbox_html_p50_ms'))} | "
        f"{_fmt(res.get('inbox_html_p95_ms'))} |",
        f"| conversation HTML page, same user (server) | "
        f"{_fmt(res.get('conversation_html_p50_ms'))} | "
        f"{_fmt(res.get('conversation_html_p95_ms'))} |",
    ]
    for kind, v in (res.get("ours_detail", {}).get("interactive") or {}).items():
        lines.append(
            f"| {kind} in a small conversation during the broadcast (HTTP, n={v['n']}) | "
            f"{_fmt(v['p50_ms'])} | {_fmt(v['p95_ms'])} |"
        )
    lines += ["", "## Targets", "", "| target | value | goal | |", "|---|---:|---:|---|"]
    for key, what, op, target in TARGETS:
        value = res.get(key)
        lines.append(f"| {what} | {_fmt(value)} | {op} {target:g} | {_met(value, op, target)} |")
    lines += [
        "",
        f"Worker peak RSS (largest single worker process): "
        f"{_fmt(res['worker_peak_rss_mb'])} MB. Data set: {json.dumps(res['dataset'])}.",
        f"Total run time {_fmt(res['total_run_s'])} s.",
        "",
    ]
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars: list[tuple[str, float, str]] = [
        (f"floor PG\n{res['floor_rows']:,}", res["floor_rows"] / res["floor_s"], "#777777"),
        (f"ours PG\n{res['floor_rows']:,}", res["floor_rows"] / res["ours_s"], "#1f77b4"),
    ]
    if res.get("naive_s"):
        bars.append(
            (f"naive PG\n{res['naive_rows']:,}", res["naive_rows"] / res["naive_s"], "#d62728")
        )
    if res.get("postman_s"):
        bars.append(
            (
                f"postman PG\n{res['postman_size']:,}",
                res["postman_size"] / res["postman_s"],
                "#ff7f0e",
            )
        )
    if res.get("sqlite_ours_s"):
        bars.append(
            (
                f"floor SQLite\n{res['sqlite_rows']:,}",
                res["sqlite_rows"] / res["sqlite_floor_s"],
                "#aaaaaa",
            )
        )
        bars.append(
            (
                f"ours SQLite\n{res['sqlite_rows']:,}",
                res["sqlite_rows"] / res["sqlite_ours_s"],
                "#6baed6",
            )
        )
    fig, ax = plt.subplots(figsize=(9, 4.8))
    ax.bar([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    ax.set_yscale("log")
    ax.set_ylabel("inbox rows written per second (log scale)")
    m = res["machine"]
    ax.set_title(
        f"Broadcast fan-out, {res['size']:,} users - {m['cores']} cores, PG {m['postgresql']}",
        fontsize=10,
    )
    for i, b in enumerate(bars):
        ax.text(i, b[1], f"{b[1]:,.0f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(res: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    if res.get("submit_p95_ms_one"):
        res["submit_p95_ratio"] = round(res["submit_p95_ms_size"] / res["submit_p95_ms_one"], 2)
    day = dt.date.today().isoformat()
    body = json.dumps(res, indent=2, sort_keys=True) + "\n"
    paths = [out / "latest.json", out / f"{day}-{res['size']}.json"]
    for p in paths:
        p.write_text(body)
    md = out / f"{day}-{res['size']}.md"
    md.write_text(markdown(res))
    latest_md = out / "latest.md"
    latest_md.write_text(markdown(res))
    png = out / f"{day}-{res['size']}.png"
    plot(res, png)
    (out / "latest.png").write_bytes(png.read_bytes())
    return [*paths, md, latest_md, png]
