//! The accuracy–timesteps curve as an SVG: every SEENN-I setting (α × temperature) with its frontier,
//! fixed t = 1..T, and the chosen default.

use std::fmt::Write;

use super::table::Table;

const W: f64 = 640.0;
const H: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

pub fn curve(name: &str, t: &Table) -> String {
    let fixed: Vec<(f64, f64)> = t
        .accuracy_per_t
        .iter()
        .enumerate()
        .map(|(i, a)| ((i + 1) as f64, *a))
        .collect();
    let (points, seenn) = settings(t);
    let axes = Axes::around(t, fixed.iter().chain(&seenn));
    let mut s = String::new();
    frame(&mut s, name, t);
    ticks(&mut s, t, &axes);
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#888" stroke-width="2" stroke-dasharray="5,4"/>"##,
        axes.line(&fixed)
    );
    for (x, y) in &points {
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="2" fill="#1f77b4" fill-opacity="0.35"/>"##,
            axes.px(*x),
            axes.py(*y)
        );
    }
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##,
        axes.line(&seenn)
    );
    chosen_and_legend(&mut s, t, &axes);
    s
}

/// (average timesteps, accuracy).
type Point = (f64, f64);

/// Every (temperature, α) setting as (average timesteps, accuracy), sorted, and the best
/// accuracy reachable at each average (the frontier).
fn settings(t: &Table) -> (Vec<Point>, Vec<Point>) {
    let mut points: Vec<Point> = t
        .rows
        .iter()
        .map(|r| (r.avg_timesteps, r.accuracy))
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    let mut seenn: Vec<Point> = Vec::new();
    for p in &points {
        if seenn.last().is_none_or(|l| p.1 > l.1) {
            seenn.push(*p);
        }
    }
    (points, seenn)
}

/// The plotted ranges (timesteps 1..=T, accuracy around what is plotted) and their pixels.
struct Axes {
    lo: f64,
    hi: f64,
    x_max: f64,
}

impl Axes {
    fn around<'a>(t: &Table, plotted: impl Iterator<Item = &'a (f64, f64)>) -> Axes {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for (_, a) in plotted {
            lo = lo.min(*a);
            hi = hi.max(*a);
        }
        let pad = ((hi - lo) * 0.1).max(0.005);
        Axes {
            lo: lo - pad,
            hi: (hi + pad).min(1.0),
            x_max: t.timesteps.max(2) as f64,
        }
    }

    fn px(&self, x: f64) -> f64 {
        LEFT + (x - 1.0) / (self.x_max - 1.0) * (W - LEFT - RIGHT)
    }

    fn py(&self, y: f64) -> f64 {
        TOP + (self.hi - y) / (self.hi - self.lo) * (H - TOP - BOTTOM)
    }

    /// An SVG polyline's points.
    fn line(&self, pts: &[(f64, f64)]) -> String {
        pts.iter()
            .map(|(x, y)| format!("{:.1},{:.1}", self.px(*x), self.py(*y)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The SVG header, the title and the axes with their labels.
fn frame(s: &mut String, name: &str, t: &Table) {
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="14">{}: accuracy against average timesteps ({} samples)</text>
<line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">average timesteps</text>
<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">accuracy (%)</text>
"#,
        W / 2.0,
        escape(name),
        t.samples,
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM,
        (LEFT + W - RIGHT) / 2.0,
        H - 12.0,
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0,
    );
}

/// The ticks of both axes, with the accuracy grid lines.
fn ticks(s: &mut String, t: &Table, axes: &Axes) {
    let (lo, hi) = (axes.lo, axes.hi);
    let every = t.timesteps.div_ceil(16).max(1);
    for x in (1..=t.timesteps).filter(|x| (x - 1) % every == 0) {
        let x = x as f64;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            axes.px(x),
            H - BOTTOM + 16.0,
            x
        );
    }
    for i in 0..=5 {
        let y = lo + (hi - lo) * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y0:.1}" x2="{}" y2="{y0:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{:.1}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            axes.py(y) + 4.0,
            y * 100.0,
            y0 = axes.py(y)
        );
    }
}

/// The chosen default, the legend and the end of the SVG.
fn chosen_and_legend(s: &mut String, t: &Table, axes: &Axes) {
    let (cx, cy) = (axes.px(t.chosen.avg_timesteps), axes.py(t.chosen.accuracy));
    let _ = write!(
        s,
        r##"<circle cx="{cx:.1}" cy="{cy:.1}" r="5" fill="#d62728"/>
<text x="{:.1}" y="{:.1}">default: α {} at temperature {}</text>
<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#1f77b4" stroke-width="2"/><text x="{}" y="{}">SEENN-I (every α and temperature)</text>
<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#888" stroke-width="2" stroke-dasharray="5,4"/><text x="{}" y="{}">fixed t</text>
</svg>
"##,
        (cx + 8.0).min(W - 220.0),
        cy + 16.0,
        t.chosen.alpha,
        t.chosen.temperature,
        W - 280.0,
        H - BOTTOM - 40.0,
        W - 250.0,
        H - BOTTOM - 40.0,
        W - 245.0,
        H - BOTTOM - 36.0,
        W - 280.0,
        H - BOTTOM - 20.0,
        W - 250.0,
        H - BOTTOM - 20.0,
        W - 245.0,
        H - BOTTOM - 16.0,
    );
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
