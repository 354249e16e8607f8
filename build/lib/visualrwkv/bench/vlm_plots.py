"""PNG plots of `visualrwkv bench vlm` results: one metric against context length, both sides per plot."""

from __future__ import annotations

from pathlib import Path

LABELS = {"visualrwkv": "VisualRWKV (RWKV-6)", "llava": "HF LLaVA (Llama)"}
STYLES = {"visualrwkv": dict(color="tab:blue", marker="o"), "llava": dict(color="tab:red", marker="s")}
PLOTS = [  # file, result field, y label, title
    ("vlm_decode_latency.png", "decode_ms_median", "ms per token (median)", "Decode latency vs context length"),
    ("vlm_peak_memory.png", "peak_memory_mb", "MiB", "Peak memory vs context length"),
    ("vlm_prefill_throughput.png", "prefill_tok_s", "tokens/s (image encoding included)", "Prefill throughput"),
]


def _series(rows: list[dict], side: str, key: str) -> tuple[list[int], list[float]]:
    points = sorted((r["context_tokens"], r[key]) for r in rows if r.get("status") == "ok" and r["side"] == side)
    return [p[0] for p in points], [p[1] for p in points]


def write_plots(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    rows = results["context"]
    config = results["config"]
    threads = f"{config['threads']} thread(s)" if config.get("threads") else "default threads"
    where = (f"{results['machine']['cpus_usable']} CPUs, {threads}" if config["device"] == "cpu" else config["device"])
    chunk = config["prefill_chunk"] or "none"
    subtitle = f"{config['dtype']}, {where}, LLaVA attn={config['attn']}, prefill chunk {chunk}"
    written = []
    for name, key, ylabel, title in PLOTS:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for side in LABELS:
            xs, ys = _series(rows, side, key)
            if xs:
                ax.plot(xs, ys, label=LABELS[side], **STYLES[side])
            if key == "peak_memory_mb":
                # the weights' share, so the growth on top of it is visible
                bx, by = _series(rows, side, "baseline_memory_mb")
                if bx:
                    ax.plot(bx, by, linestyle=":", color=STYLES[side]["color"], label=f"{LABELS[side]}: models only")
        ax.set_xlabel("context length (tokens, one image included)")
        ax.set_ylabel(ylabel)
        fig.suptitle(title, fontsize=11)
        ax.set_title(subtitle, fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(out_dir) / name
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
