//! PNG latency plots: latency against percentile (log scale towards the
//! tail: 50%, 90%, 99%, 99.9%), one panel per group (e.g. protocol and
//! load), one line per path. Drawn with plotters' bitmap backend; text
//! uses a TrueType font read at run time (DejaVu Sans from Debian's
//! `fonts-dejavu-core`, which `cargo xtask setup` installs), so no system
//! graphics library is needed.

use crate::loadgen::Sample;
use anyhow::{Context, Result, anyhow, bail};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// Where the font is looked for, first match wins.
pub const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// One line of a panel.
pub struct Series<'a> {
    pub label: String,
    pub sample: &'a Sample,
}

/// One chart.
pub struct Panel<'a> {
    pub title: String,
    pub series: Vec<Series<'a>>,
}

/// Line colours in series order (distinct on white, also in greyscale).
const COLORS: [RGBColor; 6] = [
    RGBColor(0, 0, 0),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
];

/// The colour of the `i`th line of a chart.
pub(crate) fn color(i: usize) -> RGBAColor {
    COLORS[i % COLORS.len()].to_rgba()
}

/// Percentiles drawn: x = -log10(1 - q), from the median to 99.9%.
const X_MAX: f64 = 3.0;

fn quantile_at(x: f64) -> f64 {
    1.0 - 10f64.powf(-x)
}

/// Registers the font once for the process (plots of other modules too).
pub fn register_font() -> Result<()> {
    font()
}

/// Registers the font once for the process.
fn font() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let path = FONTS
            .iter()
            .find(|p| Path::new(p).is_file())
            .ok_or_else(|| {
                format!(
                    "no DejaVu Sans font (looked in {}): install fonts-dejavu-core \
                     (`cargo xtask setup` does)",
                    FONTS.join(", ")
                )
            })?;
        let bytes = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
        // plotters keeps fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path} is not a usable TrueType font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Draws `panels` side by side (up to `columns` per row) into a PNG at `path`.
pub fn latency_png(path: &Path, title: &str, panels: &[Panel<'_>], columns: usize) -> Result<()> {
    grid_png(
        path,
        title,
        panels,
        columns,
        |p| p.title.as_ref(),
        draw_panel,
    )
}

/// The drawing area of one panel.
pub(crate) type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// Draws `panels` with `draw`, side by side (up to `columns` per row, each
/// 520x360), under `title`, into a PNG at `path`.
pub(crate) fn grid_png<P>(
    path: &Path,
    title: &str,
    panels: &[P],
    columns: usize,
    name: impl Fn(&P) -> &str,
    draw: impl Fn(&Area<'_>, &P) -> Result<()>,
) -> Result<()> {
    if panels.is_empty() {
        bail!("nothing to plot");
    }
    font()?;
    let columns = columns.clamp(1, panels.len());
    let rows = panels.len().div_ceil(columns);
    let (w, h) = (520 * columns as u32, 360 * rows as u32 + 40);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| anyhow!("{e}"))?;
    for (area, panel) in root.split_evenly((rows, columns)).iter().zip(panels) {
        draw(area, panel).with_context(|| format!("drawing {}", name(panel)))?;
    }
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

fn draw_panel(area: &Area<'_>, panel: &Panel<'_>) -> Result<()> {
    let curves: Vec<(String, Vec<(f64, f64)>)> = panel
        .series
        .iter()
        .map(|s| {
            let points = (0..=60)
                .filter_map(|i| {
                    let x = X_MAX * f64::from(i) / 60.0;
                    let d = s.sample.quantile(quantile_at(x))?;
                    Some((x, (d.as_secs_f64() * 1e3).max(1e-3)))
                })
                .collect();
            (s.label.clone(), points)
        })
        .collect();
    let ys = curves.iter().flat_map(|(_, p)| p.iter().map(|&(_, y)| y));
    let (lo, hi) = ys.fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (lo, hi) = if lo > hi {
        (0.01, 1.0)
    } else {
        (lo * 0.8, hi * 1.25)
    };
    let mut chart = chart_builder(area, &panel.title)
        .build_cartesian_2d(0f64..X_MAX, (lo..hi).log_scale())
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(4)
        .x_label_formatter(&|x| trim(quantile_at(*x) * 100.0))
        .y_label_formatter(&|y| trim(*y))
        .draw()
        .map_err(draw_err)?;
    for (i, (label, points)) in curves.into_iter().enumerate() {
        let color = color(i);
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(draw_err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    draw_legend(&mut chart)
}

/// One line of an [`XyPanel`]: `(x, y)` points in x order.
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// A chart of lines against a linear x axis; y on a log scale when
/// `log_y` (latencies from microseconds to seconds).
pub struct XyPanel {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    pub log_y: bool,
    pub lines: Vec<Line>,
}

/// Draws `panels` (e.g. latency percentiles against request rate) side by
/// side, up to `columns` per row, into a PNG at `path`.
pub fn xy_png(path: &Path, title: &str, panels: &[XyPanel], columns: usize) -> Result<()> {
    grid_png(path, title, panels, columns, |p| p.title.as_ref(), draw_xy)
}

fn draw_xy(area: &Area<'_>, panel: &XyPanel) -> Result<()> {
    let pts = || panel.lines.iter().flat_map(|l| l.points.iter().copied());
    let x_hi = pts().fold(0f64, |m, (x, _)| m.max(x)).max(1e-9) * 1.05;
    let (lo, hi) = pts()
        .map(|(_, y)| y)
        .filter(|y| *y > 0.0 || !panel.log_y)
        .fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (lo, hi) = if lo > hi { (0.01, 1.0) } else { (lo, hi) };
    let mut builder = chart_builder(area, &panel.title);
    // The two y axes are different coordinate types; one generic function
    // draws the lines on either.
    if panel.log_y {
        let chart = builder
            .build_cartesian_2d(0f64..x_hi, ((lo * 0.8)..(hi * 1.25)).log_scale())
            .map_err(draw_err)?;
        draw_xy_lines(chart, panel)
    } else {
        let chart = builder
            .build_cartesian_2d(0f64..x_hi, 0f64..(hi * 1.2).max(1e-9))
            .map_err(draw_err)?;
        draw_xy_lines(chart, panel)
    }
}

/// Every chart here: `title` above, margins, room for the axis labels.
pub(crate) fn chart_builder<'a, 'b>(
    area: &'a Area<'b>,
    title: &str,
) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .margin_right(24)
        .x_label_area_size(32)
        .y_label_area_size(56);
    builder
}

/// A chart with a linear f64 x axis and a y axis of type `Y` (linear or log).
type Chart<'a, Y> = ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, Y>>;

/// Draws the mesh, `panel`'s lines (with a dot at each point) and the
/// legend on `chart`. On a log y axis points at or below zero are left out.
fn draw_xy_lines<Y>(mut chart: Chart<'_, Y>, panel: &XyPanel) -> Result<()>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(panel.x_desc.as_str())
        .y_desc(panel.y_desc.as_str())
        .x_label_formatter(&|x| trim(*x))
        .y_label_formatter(&|y| trim(*y))
        .draw()
        .map_err(draw_err)?;
    for (i, l) in panel.lines.iter().enumerate() {
        let c = color(i);
        let points: Vec<(f64, f64)> = l
            .points
            .iter()
            .copied()
            .filter(|p| !panel.log_y || p.1 > 0.0)
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
            .map_err(draw_err)?
            .label(l.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2)));
        chart
            .draw_series(points.into_iter().map(|p| Circle::new(p, 3, c.filled())))
            .map_err(draw_err)?;
    }
    draw_legend(&mut chart)
}

/// The legend box every chart here draws, upper left.
fn draw_legend<Y: Ranged>(chart: &mut Chart<'_, Y>) -> Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(draw_err)
}

pub(crate) fn draw_err<E: std::error::Error + Send + Sync>(
    e: DrawingAreaErrorKind<E>,
) -> anyhow::Error {
    anyhow!("{e}")
}

/// `0.25`, `12.5`, `99.9`: at most three significant digits, no trailing zeros.
fn trim(v: f64) -> String {
    let s = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn labels() {
        assert_eq!(trim(99.9), "99.9");
        assert_eq!(trim(50.0), "50");
        assert_eq!(trim(0.250), "0.25");
        assert!((quantile_at(2.0) - 0.99).abs() < 1e-12);
    }

    #[test]
    fn draws_a_png() {
        if FONTS.iter().all(|p| !Path::new(p).is_file()) {
            eprintln!("SKIPPED draws_a_png: no DejaVu Sans font installed");
            return;
        }
        let mk = |k: u64| Sample {
            latencies: (1..=1000).map(|i| i * k * 1000).collect(),
            elapsed: Duration::from_secs(1),
            ..Sample::default()
        };
        let (a, b) = (mk(1), mk(2));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        let panel = |t: &str| Panel {
            title: t.into(),
            series: vec![
                Series {
                    label: "direct".into(),
                    sample: &a,
                },
                Series {
                    label: "proxy".into(),
                    sample: &b,
                },
            ],
        };
        latency_png(&path, "test", &[panel("HTTP/1.1"), panel("HTTP/2")], 2).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(bytes.len() > 5000);
    }

    #[test]
    fn draws_an_xy_png() {
        if FONTS.iter().all(|p| !Path::new(p).is_file()) {
            eprintln!("SKIPPED draws_an_xy_png: no DejaVu Sans font installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("xy.png");
        let line = |l: &str, k: f64| Line {
            label: l.into(),
            points: (1..=5)
                .map(|i| (f64::from(i) * 1000.0, f64::from(i) * k))
                .collect(),
        };
        let panel = |log_y| XyPanel {
            title: "t".into(),
            x_desc: "req/s".into(),
            y_desc: "ms".into(),
            log_y,
            lines: vec![line("p50", 0.1), line("p99", 1.0)],
        };
        xy_png(&path, "test", &[panel(true), panel(false)], 2).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(bytes.len() > 5000);
    }
}
