"""Results → `latest.json` (all numbers), `latest.md` (the tables) and `throughput.png`."""
from __future__ import annotations

import json
from pathlib import Path


def summary(results: dict) -> dict:
    """The headline keys (stable names, for tests and dashboards) on top of the detailed results."""
    relay_runs = results.get("relay", {})
    rates = {str(w): r["events_per_s"] for w, r in relay_runs.items()}
    best_w, best = max(rates.items(), key=lambda kv: kv[1]) if rates else (None, None)
    raw_read = results.get("raw_read", {}).get("events_per_s")
    raw_produce = results.get("raw_produce", {}).get("events_per_s")
    naive = results.get("naive", {}).get("events_per_s")
    lat = results.get("latency", {})
    disc = results.get("discovery", {})
    out = {
        "relay_events_per_s": rates,
        "relay_best_workers": int(best_w) if best_w else None,
        "relay_publish_span_events_per_s": {str(w): (round(results["backlog"]["events"] / r["publish_span_s"], 1)
                                                     if r.get("publish_span_s") else None)
                                            for w, r in relay_runs.items()},
        "relay_cpu_us_per_event": {str(w): r["cpu_us_per_event"] for w, r in relay_runs.items()},
        "relay_cpu_s_per_1000_events": {str(w): r["cpu_s_per_1000_events"] for w, r in relay_runs.items()},
        "relay_worker_peak_rss_mb": {str(w): max(r["worker_peak_rss_mb"] or [0]) for w, r in relay_runs.items()},
        "redis_bytes_per_dedup_key": _first(r.get("redis_bytes_per_key") for r in relay_runs.values()),
        "raw_read_events_per_s": raw_read,
        "raw_produce_events_per_s": raw_produce,
        "naive_events_per_s": naive,
        "relay_vs_raw_read": _ratio(best, raw_read),
        "relay_vs_raw_produce": _ratio(best, raw_produce),
        "relay_vs_naive": _ratio(best, naive),
        "latency_p50_s": lat.get("p50_s"),
        "latency_p95_s": lat.get("p95_s"),
        "latency_p99_s": lat.get("p99_s"),
        "latency_rate": lat.get("achieved_rate"),
        "latency_light_rate": results.get("latency_light", {}).get("achieved_rate"),
        "latency_light_p50_s": results.get("latency_light", {}).get("p50_s"),
        "latency_light_p99_s": results.get("latency_light", {}).get("p99_s"),
        "latency_light_steady": results.get("latency_light", {}).get("steady"),
        "latency_steady": lat.get("steady"),
        "latency_idle_cpu_cores": lat.get("idle_cpu_cores"),
        "latency_idle_windows_per_s": lat.get("idle_windows_per_s"),
        "confidence_s": lat.get("confidence_s"),
        # 768 vnodes x 8 shards = 6,144 streams nominally; Scylla (and the emulation) give no stream to a
        # shard owning no token of a short vnode range, so the real count is a little lower (see streams).
        "discovery_6144_streams_s": (disc.get("total_s") if (disc.get("vnodes"), disc.get("shards")) == (768, 8)
                                     else None),
        "discovery_streams": disc.get("streams"),
        "discovery_s": disc.get("total_s"),
        "discovery_peak_rss_mb": disc.get("peak_rss_mb"),
        "what_if_events_per_s": {k: r["events_per_s"] for k, r in results.get("what_if", {}).items()},
        "all_delivered": all(r.get("complete") for r in [*relay_runs.values(), *results.get("what_if", {}).values()])
        and all(
            results.get(k, {}).get("complete", True) for k in ("raw_produce", "naive")),
        "machine": results.get("machine", {}),
    }
    return {**out, "details": results}


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def _first(values):
    return next((v for v in values if v is not None), None)


def _cores(m: dict | None) -> str:
    if not m:
        return "–"
    return (f"{m['machine_cores']:.2f} / {m['services_cores']:.2f} / {m['measured_cores']:.2f} / "
            f"{m['other_cores']:.2f}")


def _fmt(x, nd: int = 0, unit: str = "") -> str:
    if x is None:
        return "–"
    if isinstance(x, float | int):
        return f"{x:,.{nd}f}{unit}"
    return str(x)


def markdown(s: dict) -> str:
    d = s["details"]
    m = s["machine"]
    b = d.get("backlog", {})
    lines = [
        "# relay benchmark results",
        "",
        f"Run `{d.get('run_id', '?')}` at {d.get('started', '?')} on {m.get('cores')} cores ({m.get('cpu')}), "
        f"{m.get('memory_gib')} GiB; Python {m.get('python')}, confluent-kafka {m.get('confluent_kafka')} "
        f"(librdkafka {m.get('librdkafka')}), scylla-driver {m.get('scylla_driver')}; Cassandra {m.get('cassandra')}, "
        f"Kafka {m.get('kafka')}, Redis {m.get('redis')} on the same machine (loopback). Load average at start: "
        f"{m.get('load_average_at_start')}. relay at commit `{m.get('relay_commit')}`"
        + (f" with local changes to {', '.join(m['relay_dirty_files'])}" if m.get("relay_dirty_files") else "")
        + ".",
        "",
    ]
    if b:
        lines += [
            f"Backlog: **{b['events']:,} events**, ~{b['payload_bytes']} B payloads, {b['aggregates']:,} aggregates, "
            f"one generation of {b['vnodes']} vnodes × {b['shards']} shards = {b['streams']} streams "
            f"({b['tasks']} tasks); written once in {b['load_seconds']:.1f} s "
            f"({b['load_events_per_s']:,.0f} events/s, emulated CDC).",
            "",
        ]
    lines += ["## Throughput (drain the whole backlog from scratch)", "",
              "| what | events/s | vs relay best | CPU µs/event | CPU s / 1,000 events | notes |",
              "|---|---:|---:|---:|---:|---|"]
    best = max(s["relay_events_per_s"].values(), default=None)
    for w, r in d.get("relay", {}).items():
        note = (f"wall {r['wall_s']:.1f} s = start {_fmt(r['startup_s'], 1)} s + publishing "
                f"{_fmt(r['publish_span_s'], 1)} s + exit {_fmt(r['tail_s'], 1)} s; "
                f"delivered {r['delivered']['distinct_ids']:,} ids, {r['delivered']['duplicates']} dup"
                + ("" if r["complete"] else " **INCOMPLETE**"))
        lines.append(f"| relay, {w} worker{'s' if int(w) > 1 else ''} | {_fmt(r['events_per_s'])} | "
                     f"{_fmt(r['events_per_s'] / best if best else None, 2)}× | {_fmt(r['cpu_us_per_event'], 1)} | "
                     f"{_fmt(r['cpu_s_per_1000_events'], 3)} | {note} |")
    for key, label in (("raw_read", "raw read (Discovery + LogReader, 1 process)"),
                       ("raw_produce", "raw produce (same records, 1 producer)"),
                       ("naive", "naive relay (flush() per event)")):
        r = d.get(key)
        if not r:
            continue
        n = r.get("rows", r.get("events"))
        note = f"{n:,} events in {r['seconds']:.2f} s"
        if key == "raw_read":
            note += f", {r['queries']:,} queries"
        if key == "naive":
            note += f" ({r['ms_per_event']} ms/event)"
        lines.append(f"| {label} | {_fmt(r['events_per_s'])} | "
                     f"{_fmt(r['events_per_s'] / best if best else None, 2)}× | {_fmt(r['cpu_us_per_event'], 1)} | "
                     f"{_fmt(r['cpu_us_per_event'] / 1000, 3)} | {note} |")
    lines += ["",
              f"Ratios (best relay run): relay / raw read = **{_fmt(s['relay_vs_raw_read'], 2)}**, "
              f"relay / raw produce = **{_fmt(s['relay_vs_raw_produce'], 2)}**, "
              f"relay / naive = **{_fmt(s['relay_vs_naive'], 1)}**.", ""]
    if d.get("relay"):
        lines += ["### relay processes", "",
                  "| workers | CPU total s (wait4) | supervisor s | workers s | worker threads: main / librdkafka / "
                  "other s | peak RSS per worker MB | supervisor RSS MB | Redis B/key (used_memory Δ) | "
                  "Redis B/key (MEMORY USAGE) | machine busy / services / relay / other cores |",
                  "|---:|---:|---:|---:|---|---|---:|---:|---:|---|"]
        for w, r in d["relay"].items():
            threads = ", ".join(f"{t['main']:.1f}/{t['librdkafka']:.1f}/{t['other']:.1f}"
                                for t in r["worker_threads_cpu_s"])
            lines.append(f"| {w} | {r['cpu_s']:.1f} | {r['supervisor_cpu_s']:.1f} | "
                         f"{', '.join(f'{x:.1f}' for x in r['worker_cpu_s'])} | {threads} | "
                         f"{', '.join(f'{x:.0f}' for x in r['worker_peak_rss_mb'])} | "
                         f"{r['supervisor_peak_rss_mb']:.0f} | {_fmt(r['redis_bytes_per_key'], 1)} | "
                         f"{_fmt(r['redis_memory_usage_per_key'], 1)} | {_cores(r.get('machine_cpu'))} |")
        lines.append("")
    if d.get("what_if"):
        lines += ["### What-if runs (relay unchanged, one config override)", "",
                  "| variant | workers | events/s | vs same workers, defaults | publishing s | CPU µs/event | "
                  "override | delivered |", "|---|---:|---:|---:|---:|---:|---|---|"]
        for name, r in d["what_if"].items():
            base = d.get("relay", {}).get(str(r["workers"]), {}).get("events_per_s")
            env = ", ".join(f"`{k}={v}`" for k, v in r["env"].items())
            lines.append(f"| {name}: {r.get('description', '')} | {r['workers']} | {_fmt(r['events_per_s'])} | "
                         f"{_fmt(r['events_per_s'] / base if base else None, 2)}× | {_fmt(r['publish_span_s'], 1)} | "
                         f"{_fmt(r['cpu_us_per_event'], 1)} | {env} | {r['delivered']['distinct_ids']:,} ids, "
                         f"{r['delivered']['duplicates']} dup{'' if r['complete'] else ' **INCOMPLETE**'} |")
        lines.append("")
    st = d.get("raw_produce", {}).get("stage_us_per_event")
    if st:
        lines += ["### Stage costs in one process (µs of wall time per event, same events)", "",
                  "| " + " | ".join(st) + " |", "|" + "---:|" * len(st),
                  "| " + " | ".join(f"{v:.1f}" for v in st.values()) + " |", ""]
    points = [(k, d[k]) for k in ("latency", "latency_light") if d.get(k)]
    if points:
        lines += ["## Latency (steady load)", "",
                  "| point | target rate | achieved rate | workers | p50 s | p95 s | p99 s | max seen s | "
                  "p50 first / last quarter s | confidence s | window s | poll s | steady | delivered | "
                  "relay CPU µs/event |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---|---:|"]
        for key, lat in points:
            never = f"> {_fmt(lat['max_observed_s'], 1)} (never)"
            pct = [never if lat.get(f"{q}_censored") else _fmt(lat[f"{q}_s"], 3) for q in ("p50", "p95", "p99")]
            lines.append(
                f"| {'half of relay best' if key == 'latency' else 'light load'} | {_fmt(lat['target_rate'])}/s | "
                f"{_fmt(lat['achieved_rate'])}/s | {lat['workers']} | {' | '.join(pct)} | "
                f"{_fmt(lat['max_observed_s'], 3)} | {_fmt(lat['p50_first_quarter_s'], 2)} / "
                f"{_fmt(lat['p50_last_quarter_s'], 2)} | {lat['confidence_s']} | {lat['window_s']} | "
                f"{lat['poll_interval_s']} | {'yes' if lat['steady'] else '**no**'} | {lat['distinct_ids']:,}/"
                f"{lat['events']:,}, {lat['duplicates']} dup | {_fmt(lat['relay_cpu_us_per_event'])} |")
        lines += ["", "relay's own cost in live mode (all its processes; windows = CQL window reads, from "
                  "`relay_cql_read_duration_seconds_count`; checkpoints from `relay_checkpoint_writes_total`):", "",
                  "| point | idle CPU (cores) | idle windows/s | idle checkpoints/s | CPU under load (cores) | "
                  "windows/s under load | checkpoints/s under load |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for key, lat in points:
            lines.append(f"| {'half of relay best' if key == 'latency' else 'light load'} | "
                         f"{_fmt(lat.get('idle_cpu_cores'), 2)} | {_fmt(lat.get('idle_windows_per_s'))} | "
                         f"{_fmt(lat.get('idle_checkpoints_per_s'))} | {_fmt(lat.get('load_cpu_cores'), 2)} | "
                         f"{_fmt(lat.get('load_windows_per_s'))} | {_fmt(lat.get('load_checkpoints_per_s'))} |")
        lat = points[0][1]
        lines += ["", f"Latency = broker LogAppendTime − `cdc_time` header, over {lat['seconds']:.0f} s of load, then "
                  "up to 60 s for relay to publish the rest; an event still unpublished then counts as slower than "
                  "all (\"never\"). The confidence window is the floor: a row is read only once it is that old. "
                  "*Steady* = the last quarter's p50 is within 1 s of the first quarter's; when it is not, relay fell "
                  "behind at that rate and the percentiles grow with the run's length. relay starts with "
                  "`start_from = \"now\"` and the load begins once every task's position is near the present.", ""]
    disc = d.get("discovery")
    if disc:
        lines += ["## Discovery at scale (fresh process)", "",
                  "| streams | vnodes × shards | tasks | generations() s | tasks_of s | assign(4 slots) s | total s | "
                  "peak RSS MB | process wall s | cached generations() s | tasks_of + assign again s |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {disc['streams']:,} | {disc['vnodes']} × {disc['shards']} | {disc['tasks']} | "
                  f"{disc['generations_s']:.3f} | {disc['tasks_of_s']:.3f} | {disc['assign_s']:.3f} | "
                  f"**{disc['total_s']:.3f}** | {disc['peak_rss_mb']:.0f} | {disc['process_wall_s']:.2f} | "
                  f"{disc['generations_cached_s']:.3f} | {disc['assign_repeat_s'] + disc['tasks_of_repeat_s']:.3f} |",
                  ""]
    if d.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in d["notes"]] + [""]
    return "\n".join(lines)


def plot(s: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = {int(w): v for w, v in s["relay_events_per_s"].items()}
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=120)
    if rates:
        ws = sorted(rates)
        ax.plot(ws, [rates[w] for w in ws], "o-", color="tab:blue", lw=2, label="relay (process start → exit)")
        span = {int(w): v for w, v in s["relay_publish_span_events_per_s"].items() if v}
        if span:
            ax.plot(sorted(span), [span[w] for w in sorted(span)], "s--", color="tab:blue", alpha=0.5,
                    label="relay (first → last publish)")
        ax.set_xticks(ws)
    styles = (("raw_read_events_per_s", "raw read", "tab:green"),
              ("raw_produce_events_per_s", "raw produce", "tab:orange"),
              ("naive_events_per_s", "naive relay (flush per event)", "tab:red"))
    for key, label, color in styles:
        if s.get(key):
            ax.axhline(s[key], color=color, ls=":", lw=1.5, label=f"{label}: {s[key]:,.0f}/s")
    ax.set_xlabel("relay worker processes")
    ax.set_ylabel("events / s (log scale)")
    ax.set_yscale("log")  # raw produce is an order of magnitude above the rest
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
    b = s["details"].get("backlog", {})
    ax.set_title(f"relay throughput, {b.get('events', 0):,} events of ~{b.get('payload_bytes', '?')} B "
                 f"({s['machine'].get('cores')} cores, all services local)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(results: dict, out_dir: Path) -> tuple[dict, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    s = summary(results)
    md = markdown(s)
    (out_dir / "latest.json").write_text(json.dumps(s, indent=1, default=str) + "\n")
    (out_dir / "latest.md").write_text(md + "\n")
    try:
        plot(s, out_dir / "throughput.png")
    except ImportError:
        print("matplotlib is missing: no plot (pip install -e '.[bench]')")
    return s, md


if __name__ == "__main__":  # re-render latest.md / throughput.png from a results directory's latest.json
    import sys

    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results"
    write(json.loads((out_dir / "latest.json").read_text())["details"], out_dir)
    print(f"rendered {out_dir / 'latest.md'} and {out_dir / 'throughput.png'}")
