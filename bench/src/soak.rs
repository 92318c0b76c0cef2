//! The soak benchmark's arithmetic and pictures: time series sampled over a
//! long run (a proxy's RSS, its open descriptors, an eBPF map's entries),
//! their least-squares slope, a summary table and a PNG of the series
//! against time. Whether something leaks is read off the slope: a flat
//! series has a slope near zero once warm-up is over.

use crate::plot::{self, draw_err};
use crate::table::{Align, Table};
use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

/// One sampled quantity over time.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeSeries {
    /// `client proxy RSS`, `CONDUIT_ORIG_DST entries`.
    pub name: String,
    /// `MiB`, `fds`, `entries`.
    pub unit: String,
    /// (seconds since the start, value).
    pub points: Vec<(f64, f64)>,
}

/// Least-squares slope of `points`, in value units per second; `None`
/// with fewer than two distinct times.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    Some(sxy / sxx)
}

/// The points at or after `from` seconds (the warm-up left out).
pub fn after(points: &[(f64, f64)], from: f64) -> Vec<(f64, f64)> {
    points.iter().copied().filter(|p| p.0 >= from).collect()
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A Markdown table: per series its first, last, minimum and maximum
/// values, and the slope per hour over the samples after `warmup` seconds
/// (absolute, and relative to the series' mean there).
pub fn summary(series: &[TimeSeries], warmup: f64) -> String {
    let mut t = Table::new(&[
        ("series", Align::Left),
        ("first", Align::Right),
        ("last", Align::Right),
        ("min", Align::Right),
        ("max", Align::Right),
        ("slope after warm-up", Align::Right),
        ("per hour, of the mean", Align::Right),
    ]);
    for s in series {
        let vals = s.points.iter().map(|p| p.1);
        let (lo, hi) = vals.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        let first = s.points.first().map_or(f64::NAN, |p| p.1);
        let last = s.points.last().map_or(f64::NAN, |p| p.1);
        let tail = after(&s.points, warmup);
        let mean = tail.iter().map(|p| p.1).sum::<f64>() / tail.len().max(1) as f64;
        let (per_hour, rel) = match slope(&tail) {
            Some(k) => (
                format!("{:+.3} {}/h", k * 3600.0, s.unit),
                if mean.abs() > f64::EPSILON {
                    format!("{:+.2} %", k * 3600.0 / mean * 100.0)
                } else {
                    "–".into()
                },
            ),
            None => ("–".into(), "–".into()),
        };
        t.row([
            s.name.clone(),
            format!("{} {}", fmt(first), s.unit),
            format!("{} {}", fmt(last), s.unit),
            format!("{} {}", fmt(lo), s.unit),
            format!("{} {}", fmt(hi), s.unit),
            per_hour,
            rel,
        ]);
    }
    t.to_markdown()
}

/// One chart: series of the same unit against time (minutes).
pub struct Chart<'a> {
    pub title: String,
    pub series: Vec<&'a TimeSeries>,
}

/// Draws `charts` side by side into a PNG.
pub fn png(path: &Path, title: &str, charts: &[Chart<'_>]) -> Result<()> {
    plot::grid_png(
        path,
        title,
        charts,
        charts.len(),
        |c| c.title.as_ref(),
        draw_chart,
    )
}

fn draw_chart(area: &plot::Area<'_>, chart: &Chart<'_>) -> Result<()> {
    let pts = chart.series.iter().flat_map(|s| s.points.iter());
    let (x_hi, y_hi) = pts.fold((0f64, 0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    let unit = chart.series.first().map_or("", |s| s.unit.as_str());
    let mut c = plot::chart_builder(area, &chart.title)
        .build_cartesian_2d(0f64..(x_hi / 60.0).max(0.1), 0f64..(y_hi * 1.2).max(1.0))
        .map_err(draw_err)?;
    c.configure_mesh()
        .x_desc("minutes")
        .y_desc(unit)
        .draw()
        .map_err(draw_err)?;
    for (i, s) in chart.series.iter().enumerate() {
        let color = plot::color(i);
        let points: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0 / 60.0, p.1)).collect();
        c.draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(draw_err)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_is_the_least_squares_line() {
        #[allow(clippy::type_complexity)] // a table of test cases
        let cases: &[(&[(f64, f64)], Option<f64>)] = &[
            (&[], None),
            (&[(1.0, 5.0)], None),
            (&[(1.0, 5.0), (1.0, 6.0)], None),
            (&[(0.0, 5.0), (10.0, 5.0), (20.0, 5.0)], Some(0.0)),
            (&[(0.0, 0.0), (1.0, 2.0), (2.0, 4.0)], Some(2.0)),
            // Noise around a flat line: slope zero.
            (
                &[(0.0, 1.0), (1.0, -1.0), (2.0, 1.0), (3.0, -1.0), (4.0, 0.0)],
                Some(-0.2),
            ),
        ];
        for (points, want) in cases {
            let got = slope(points);
            match (got, want) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "{points:?}: {g} != {w}"),
                (g, w) => assert_eq!(g, *w, "{points:?}"),
            }
        }
    }

    #[test]
    fn the_summary_reports_the_slope_after_warm_up() {
        let s = TimeSeries {
            name: "rss".into(),
            unit: "MiB".into(),
            // Grows during the first minute, flat after.
            points: vec![
                (0.0, 5.0),
                (30.0, 8.0),
                (60.0, 10.0),
                (120.0, 10.0),
                (180.0, 10.0),
            ],
        };
        let t = summary(&[s], 60.0);
        assert!(
            t.contains("| rss | 5 MiB | 10 MiB | 5 MiB | 10 MiB | +0.000 MiB/h | +0.00 % |"),
            "{t}"
        );
    }

    #[test]
    fn a_plot_is_written() {
        if crate::plot::register_font().is_err() {
            eprintln!("no font: plot not tested");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let s = TimeSeries {
            name: "a".into(),
            unit: "MiB".into(),
            points: vec![(0.0, 1.0), (60.0, 2.0)],
        };
        let path = dir.path().join("p.png");
        png(
            &path,
            "t",
            &[Chart {
                title: "x".into(),
                series: vec![&s],
            }],
        )
        .unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 1000);
    }
}
