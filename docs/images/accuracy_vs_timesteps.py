"""The accuracy–timesteps picture of docs/concepts.md, drawn from a package's calibration.json.

    python3 docs/images/accuracy_vs_timesteps.py                       # models/fashion-mnist -> docs/images/
    python3 docs/images/accuracy_vs_timesteps.py --package models/NAME --out FILE.svg

Plots, on the package's calibration split: the accuracy of running exactly t timesteps (t = 1..T),
SEENN-I's α sweep, the learned exit rule's threshold sweep and the SEENN-II policy's bias sweep (when
the package has them), the calibrated default α, and the AET. Standard library only; the output is
the same bytes for the same calibration.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
W, H = 800, 440
LEFT, RIGHT, TOP, BOTTOM = 70, 250, 46, 56
SERIES = [
    # (key, legend, colour, dash)
    ("fixed", "fixed t = 1..T", "#555555", ""),
    ("confidence", "SEENN-I: α sweep", "#2a6fe0", ""),
    ("learned", "learned exit: threshold sweep", "#1a9850", ""),
    ("policy", "SEENN-II: policy bias sweep", "#d95f02", "6 4"),
]


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points sorted by average timesteps (a sweep is already monotone in its dial)."""
    return sorted(points)


def curves(cal: dict) -> dict[str, list[tuple[float, float]]]:
    acc = cal["accuracy_per_t"]
    out = {"fixed": [(float(t + 1), a) for t, a in enumerate(acc)],
           "confidence": frontier([(r["avg_timesteps"], r["accuracy"]) for r in cal["alpha_sweep"]])}
    if cal.get("learned"):
        out["learned"] = frontier([(r["avg_timesteps"], r["accuracy"]) for r in cal["learned"]["threshold_sweep"]])
    if cal.get("policy"):
        out["policy"] = frontier([(r["avg_timesteps"], r["accuracy"]) for r in cal["policy"]["bias_sweep"]])
    return out


def fmt(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".") if abs(v - round(v, 1)) < 1e-9 else f"{v:.2f}"


def svg(name: str, cal: dict) -> str:
    t_max = len(cal["accuracy_per_t"])
    data = curves(cal)
    ys = [a for pts in data.values() for _, a in pts]
    lo = min(ys) * 100
    hi = max(ys) * 100
    step = 0.5 if hi - lo <= 4 else 1.0 if hi - lo <= 10 else 5.0
    lo = step * int(lo / step)
    hi = step * (int(hi / step) + 1)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + (t - 1) / max(t_max - 1, 1) * pw

    def y(a: float) -> float:
        return TOP + (1 - (a * 100 - lo) / (hi - lo)) * ph

    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         'font-family="sans-serif" font-size="12">',
         '<rect width="100%" height="100%" fill="white"/>',
         f'<text x="{W / 2:.0f}" y="24" text-anchor="middle" font-size="14">{name}: accuracy against average '
         f'timesteps ({cal["split"]} split, {cal["samples"]} inputs)</text>']
    n_ticks = int(round((hi - lo) / step))
    for i in range(n_ticks + 1):
        v = lo + i * step
        yy = TOP + (1 - i / n_ticks) * ph
        s.append(f'<line x1="{LEFT}" y1="{yy:.1f}" x2="{LEFT + pw}" y2="{yy:.1f}" stroke="#e4e4e4"/>'
                 f'<text x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{fmt(v)}</text>')
    tick = max(1, t_max // 8)
    for t in range(1, t_max + 1, tick):
        s.append(f'<text x="{x(t):.1f}" y="{TOP + ph + 16}" text-anchor="middle">{t}</text>')
    s.append(f'<line x1="{LEFT}" y1="{TOP + ph}" x2="{LEFT + pw}" y2="{TOP + ph}" stroke="black"/>')
    s.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + ph}" stroke="black"/>')
    s.append(f'<text x="{LEFT + pw / 2:.0f}" y="{H - 16}" text-anchor="middle">average timesteps per input</text>')
    s.append(f'<text x="18" y="{TOP + ph / 2:.0f}" text-anchor="middle" transform="rotate(-90 18 {TOP + ph / 2:.0f})">'
             'accuracy (%)</text>')
    # AET: the average earliest timestep at which each input is already right (T for never), at full-T accuracy.
    aet, acc_t = cal["aet"], cal["accuracy_per_t"][-1]
    s.append(f'<line x1="{x(aet):.1f}" y1="{TOP}" x2="{x(aet):.1f}" y2="{TOP + ph}" stroke="#7b3294" stroke-dasharray="3 3"/>')
    s.append(f'<text x="{x(aet) + 4:.1f}" y="{TOP + ph - 6}" fill="#7b3294">AET {aet:.3f}</text>')
    for key, _, colour, dash in SERIES:
        pts = data.get(key)
        if not pts:
            continue
        d = f' stroke-dasharray="{dash}"' if dash else ""
        poly = " ".join(f"{x(t):.1f},{y(a):.1f}" for t, a in pts)
        s.append(f'<polyline points="{poly}" fill="none" stroke="{colour}" stroke-width="2"{d}/>')
        if key == "fixed":
            s += [f'<circle cx="{x(t):.1f}" cy="{y(a):.1f}" r="3.5" fill="{colour}"/>' for t, a in pts]
    default = next((r for r in cal["alpha_sweep"] if abs(r["alpha"] - cal["chosen_alpha"]) < 1e-12), None)
    if default:
        cx, cy = x(default["avg_timesteps"]), y(default["accuracy"])
        s.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="6" fill="none" stroke="#2a6fe0" stroke-width="2"/>')
        s.append(f'<text x="{cx + 8:.1f}" y="{cy + 16:.1f}" fill="#2a6fe0">default α = {cal["chosen_alpha"]}</text>')
    s.append(f'<circle cx="{x(aet):.1f}" cy="{y(acc_t):.1f}" r="4" fill="#7b3294"/>')
    # Legend, right of the plot.
    lx, ly = LEFT + pw + 16, TOP + 8
    legend = [(lab, c, dash) for key, lab, c, dash in SERIES if data.get(key)] + [("AET: earliest right step, averaged", "#7b3294", "3 3")]
    for i, (lab, colour, dash) in enumerate(legend):
        yy = ly + i * 22
        d = f' stroke-dasharray="{dash}"' if dash else ""
        s.append(f'<line x1="{lx}" y1="{yy}" x2="{lx + 22}" y2="{yy}" stroke="{colour}" stroke-width="2"{d}/>'
                 f'<text x="{lx + 28}" y="{yy + 4}">{lab}</text>')
    s.append("</svg>")
    return "\n".join(s) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", type=Path, default=ROOT / "models" / "fashion-mnist")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "accuracy-vs-timesteps.svg")
    args = ap.parse_args()
    cal = json.loads((args.package / "calibration.json").read_text())
    manifest = json.loads((args.package / "manifest.json").read_text())
    args.out.write_text(svg(manifest["name"], cal))
    print(f"{args.out}")


if __name__ == "__main__":
    main()
