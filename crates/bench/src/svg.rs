//! Plain SVG charts for the report: grouped horizontal bars and log–log lines. No
//! dependencies, no scripts; text escaped.

use std::fmt::Write as _;

/// The colour of series `i` (for bars: of subject `i` of the legend, so one subject has one
/// colour in every chart).
pub fn colour(i: usize) -> &'static str {
    const PALETTE: [&str; 6] = ["#1f77b4", "#7f7f7f", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];
    PALETTE[i % PALETTE.len()]
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One group of bars: a label and (bar label, subject, value) triples.
pub type Group = (String, Vec<(String, String, f64)>);

/// Horizontal bars, one row per (group, bar), on a log₁₀ axis (values > 0; others are
/// left out), with the value written at the end of each bar. A bar's colour is its
/// subject's place in `legend` (drawn under the title), the same in every chart given the
/// same legend.
pub fn bar_chart(title: &str, unit: &str, groups: &[Group], legend: &[String]) -> String {
    let rows: usize = groups.iter().map(|(_, bars)| bars.len()).sum();
    let (left, right, row_h, top) = (260.0, 110.0, 18.0, 62.0);
    let width = 900.0;
    let height = top + rows as f64 * row_h + groups.len() as f64 * 10.0 + 40.0;
    let values: Vec<f64> = groups
        .iter()
        .flat_map(|(_, b)| b.iter().map(|(_, _, v)| *v))
        .filter(|v| *v > 0.0)
        .collect();
    let (lo, hi) = log_range(&values);
    let x = |v: f64| left + (v.log10() - lo) / (hi - lo) * (width - left - right);
    let mut s = header(width, height, title);
    let mut lx = 10.0;
    for (i, subject) in legend.iter().enumerate() {
        let _ = write!(
            s,
            r#"<rect x="{lx:.0}" y="34" width="12" height="12" fill="{}"/><text x="{:.0}" y="44" font-size="11">{}</text>"#,
            colour(i),
            lx + 16.0,
            escape(subject)
        );
        lx += 16.0 + 7.0 * subject.chars().count() as f64 + 18.0;
    }
    let mut y = top;
    for (group, bars) in groups {
        for (name, subject, v) in bars {
            let ci = legend.iter().position(|n| n == subject).unwrap_or(legend.len());
            let _ = write!(
                s,
                r#"<text x="{:.0}" y="{:.0}" text-anchor="end" font-size="11">{} · {}</text>"#,
                left - 6.0,
                y + row_h * 0.7,
                escape(group),
                escape(name)
            );
            if *v > 0.0 {
                let _ = write!(
                    s,
                    r#"<rect x="{left:.0}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.0}" font-size="11">{} {}</text>"#,
                    y + 2.0,
                    (x(*v) - left).max(1.0),
                    row_h - 4.0,
                    colour(ci),
                    x(*v) + 4.0,
                    y + row_h * 0.7,
                    number(*v),
                    escape(unit)
                );
            }
            y += row_h;
        }
        y += 10.0;
    }
    s.push_str(&log_axis(lo, hi, left, width - right, y + 4.0, unit));
    s.push_str("</svg>\n");
    s
}

/// One line: a name and (x, y) points.
pub type Series = (String, Vec<(f64, f64)>);

/// Lines on log₁₀ axes (points ≤ 0 left out), with a legend.
pub fn line_chart(title: &str, x_unit: &str, y_unit: &str, series: &[Series]) -> String {
    let (left, right, top, bottom) = (70.0, 330.0, 40.0, 50.0);
    let (width, height) = (1000.0, 420.0);
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .filter(|v| *v > 0.0)
        .collect();
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .filter(|v| *v > 0.0)
        .collect();
    let (xlo, xhi) = log_range(&xs);
    let (ylo, yhi) = log_range(&ys);
    let px = |v: f64| left + (v.log10() - xlo) / (xhi - xlo) * (width - left - right);
    let py = |v: f64| height - bottom - (v.log10() - ylo) / (yhi - ylo) * (height - top - bottom);
    let mut s = header(width, height, title);
    // Grid and labels on powers of ten.
    for e in (ylo.floor() as i32)..=(yhi.ceil() as i32) {
        let v = 10f64.powi(e);
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{:.0}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"##,
            width - right,
            left - 4.0,
            py(v) + 4.0,
            number(v),
            y = py(v)
        );
    }
    for e in (xlo.floor() as i32)..=(xhi.ceil() as i32) {
        let v = 10f64.powi(e);
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{top}" y2="{:.0}" stroke="#ddd"/><text x="{x:.1}" y="{:.0}" text-anchor="middle" font-size="11">{}</text>"##,
            height - bottom,
            height - bottom + 16.0,
            number(v),
            x = px(v)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{:.0}" y="{:.0}" text-anchor="middle" font-size="12">{}</text><text x="14" y="{:.0}" font-size="12" transform="rotate(-90 14 {:.0})" text-anchor="middle">{}</text>"#,
        (left + width - right) / 2.0,
        height - 12.0,
        escape(x_unit),
        (top + height - bottom) / 2.0,
        (top + height - bottom) / 2.0,
        escape(y_unit)
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .filter(|(x, y)| *x > 0.0 && *y > 0.0)
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let dash = if name.contains("one request per lock") {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
            colour(i),
            path.join(" ")
        );
        for p in &path {
            let (cx, cy) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = write!(s, r#"<circle cx="{cx}" cy="{cy}" r="3" fill="{}"/>"#, colour(i));
        }
        let ly = top + 16.0 * i as f64;
        let _ = write!(
            s,
            r#"<rect x="{:.0}" y="{:.0}" width="12" height="3" fill="{}"/><text x="{:.0}" y="{:.0}" font-size="11">{}</text>"#,
            width - right + 12.0,
            ly + 4.0,
            colour(i),
            width - right + 30.0,
            ly + 8.0,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn header(width: f64, height: f64, title: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/><text x="10" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    )
}

/// log₁₀ bounds covering `values` on whole decades (0..1 when empty).
fn log_range(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let (lo, hi) = (lo.log10().floor(), hi.log10().ceil());
    if hi <= lo {
        (lo, lo + 1.0)
    } else {
        (lo, hi)
    }
}

fn log_axis(lo: f64, hi: f64, x0: f64, x1: f64, y: f64, unit: &str) -> String {
    let mut s = format!(r##"<line x1="{x0}" x2="{x1}" y1="{y:.0}" y2="{y:.0}" stroke="#333"/>"##);
    for e in (lo as i32)..=(hi as i32) {
        let x = x0 + (f64::from(e) - lo) / (hi - lo) * (x1 - x0);
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{y:.0}" y2="{:.0}" stroke="#333"/><text x="{x:.1}" y="{:.0}" text-anchor="middle" font-size="11">{} {}</text>"##,
            y + 4.0,
            y + 16.0,
            number(10f64.powi(e)),
            escape(unit)
        );
    }
    s
}

/// A value for a label: 3 significant digits, thousands without separators.
fn number(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_well_formed_and_escaped() {
        let svg = bar_chart(
            "a <b> & c",
            "µs",
            &[(
                "redis".into(),
                vec![
                    ("ours".into(), "ours".into(), 200.0),
                    ("raw".into(), "raw".into(), 180.0),
                    ("zero".into(), "raw".into(), 0.0),
                ],
            )],
            &["ours".into(), "raw".into()],
        );
        assert!(
            svg.contains(r##"<rect x="10" y="34" width="12" height="12" fill="#1f77b4"/>"##),
            "{svg}"
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        assert_eq!(svg.matches("<rect x=\"260\"").count(), 2, "a bar per positive value");
        assert!(svg.contains(">200 µs<"));
    }

    #[test]
    fn lines_place_points_inside_the_plot() {
        let svg = line_chart(
            "renewals",
            "locks",
            "req/s",
            &[("redis".into(), vec![(100.0, 1.0), (10_000.0, 5.0)])],
        );
        assert_eq!(svg.matches("<circle").count(), 2);
        for c in svg.split("<circle cx=\"").skip(1) {
            let x: f64 = c.split('"').next().unwrap().parse().unwrap();
            assert!((70.0..=670.0).contains(&x), "{x}");
        }
    }

    #[test]
    fn log_ranges_cover_whole_decades() {
        assert_eq!(log_range(&[150.0, 2500.0]), (2.0, 4.0));
        assert_eq!(log_range(&[100.0]), (2.0, 3.0));
        assert_eq!(log_range(&[]), (0.0, 1.0));
    }
}
