//! Loss curves: train (and eval) loss against step, the learning rate on a second axis, drawn
//! from a `metrics.jsonl` into a PNG with `plotters`. The font (DejaVu Sans Mono, under its
//! free license in `assets/fonts/`) is embedded, so a machine without fonts renders it too.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use serde_json::Value;

const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSansMono.ttf");

/// One optimizer step of a metrics file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub step: f64,
    pub loss: f64,
    pub lr: f64,
    pub eval_loss: Option<f64>,
}

/// The steps of `metrics.jsonl` (`step`, `loss`, `lr`, optional `eval_loss`); a step whose loss
/// is not finite (skipped) is left out of the curve. A line that is not a step names its line.
pub fn read_metrics(path: &Path) -> Result<Vec<Point>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut points = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("{}: not JSON: {e}", at()))?;
        let number = |key: &str| v.get(key).and_then(Value::as_f64);
        let (Some(step), Some(lr)) = (number("step"), number("lr")) else {
            return Err(format!("{}: a metrics line needs `step` and `lr`", at()));
        };
        let loss = number("loss").unwrap_or(f64::NAN);
        if !loss.is_finite() {
            continue;
        }
        points.push(Point {
            step,
            loss,
            lr,
            eval_loss: number("eval_loss").filter(|l| l.is_finite()),
        });
    }
    if points.is_empty() {
        return Err(format!("{}: no steps with a finite loss", path.display()));
    }
    Ok(points)
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font, checked in at build time.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Draws `points` into the PNG `out` (1000 × 600), titled `title`.
pub fn draw(points: &[Point], out: &Path, title: &str) -> Result<(), String> {
    register_font();
    let fail = |e: &dyn std::fmt::Display| format!("{}: cannot draw the plot: {e}", out.display());
    let last = points.last().map_or(1.0, |p| p.step).max(1.0);
    let losses = points
        .iter()
        .flat_map(|p| std::iter::once(p.loss).chain(p.eval_loss));
    let (lo, hi) = losses.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), l| {
        (a.min(l), b.max(l))
    });
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let lr_max = points.iter().map(|p| p.lr).fold(0.0, f64::max).max(1e-12) * 1.05;
    // The encoder picks the format from the extension, so the temporary name ends in .png.
    let name = out
        .file_name()
        .map_or("plot".into(), |n| n.to_string_lossy().to_string());
    let temporary = out.with_file_name(format!(".{name}.tmp.png"));
    {
        let root = BitMapBackend::new(&temporary, (1000, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .right_y_label_area_size(80)
            .build_cartesian_2d(0.0..last, (lo - pad).max(0.0)..hi + pad)
            .map_err(|e| fail(&e))?
            .set_secondary_coord(0.0..last, 0.0..lr_max);
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| fail(&e))?;
        chart
            .configure_secondary_axes()
            .y_desc("learning rate")
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| fail(&e))?;
        let blue = RGBColor(31, 119, 180);
        let orange = RGBColor(255, 127, 14);
        let grey = RGBColor(150, 150, 150);
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.step, p.loss)),
                blue.stroke_width(2),
            ))
            .map_err(|e| fail(&e))?
            .label("train loss")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2))
            });
        let evals: Vec<(f64, f64)> = points
            .iter()
            .filter_map(|p| p.eval_loss.map(|l| (p.step, l)))
            .collect();
        if !evals.is_empty() {
            chart
                .draw_series(LineSeries::new(
                    evals.iter().copied(),
                    orange.stroke_width(2),
                ))
                .map_err(|e| fail(&e))?;
            chart
                .draw_series(
                    evals
                        .iter()
                        .map(|&(x, y)| Circle::new((x, y), 4, orange.filled())),
                )
                .map_err(|e| fail(&e))?
                .label("eval loss")
                .legend(move |(x, y)| Circle::new((x + 10, y), 4, orange.filled()));
        }
        chart
            .draw_secondary_series(LineSeries::new(
                points.iter().map(|p| (p.step, p.lr)),
                grey.stroke_width(1),
            ))
            .map_err(|e| fail(&e))?
            .label("learning rate")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    std::fs::rename(&temporary, out).map_err(|e| format!("{}: {e}", out.display()))
}

/// Draws `metrics` into `out`, titled with the run folder's name.
pub fn draw_metrics(metrics: &Path, out: &Path) -> Result<(), String> {
    let points = read_metrics(metrics)?;
    let title = metrics
        .parent()
        .and_then(|d| d.file_name())
        .map(|n| format!("kiln train: {}", n.to_string_lossy()))
        .unwrap_or_else(|| "kiln train".into());
    draw(&points, out, &title)
}
