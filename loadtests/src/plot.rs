//! The drift plot of a run: RSS and open fds per process and the API's p50/p99, against time,
//! three panels in one PNG, so a leak or a creeping latency is seen, not guessed.
//!
//! Text needs a font: plotters' `ab_glyph` feature renders a TTF we load at run time (no system
//! fontconfig on these machines). `PLOT_FONT` names one; else DejaVu Sans from Debian's
//! fonts-dejavu-core. Without a font the lines and the frame are drawn with no text at all, and
//! [`draw`] says so (the summary carries the axis meanings instead).

use plotters::prelude::*;
use std::collections::BTreeSet;
use std::path::Path;

use crate::metrics::Sample;

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a font for "sans-serif" once; true when text can be drawn.
fn font() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        let mut paths: Vec<String> = FONTS.iter().map(|s| s.to_string()).collect();
        if let Ok(p) = std::env::var("PLOT_FONT") {
            paths.insert(0, p);
        }
        for p in paths {
            if let Ok(bytes) = std::fs::read(&p) {
                // register_font wants 'static bytes; one font per process, so leaking is fine.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

const COLORS: &[RGBColor] = &[
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

type Series = Vec<(String, Vec<(f64, f64)>)>;

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    series: &Series,
    text: bool,
) -> Result<(), String> {
    let xmax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold(0.1f64, f64::max);
    let ymax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut b = ChartBuilder::on(area);
    b.margin(12);
    if text {
        b.caption(title, ("sans-serif", 18))
            .x_label_area_size(30)
            .y_label_area_size(60);
    }
    let mut chart = b
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(|e| e.to_string())?;
    if text {
        chart
            .configure_mesh()
            .x_desc("minutes")
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let s = chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        if text {
            s.label(name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
            });
        }
    }
    if text && !series.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Draws `samples` to `path` (PNG, 1200×1000). Returns whether text could be drawn.
pub fn draw(path: &Path, title: &str, samples: &[Sample]) -> Result<bool, String> {
    let text = font();
    let names: BTreeSet<String> = samples
        .iter()
        .flat_map(|s| s.procs.keys().cloned())
        .collect();
    let series_of = |key: &str, scale: f64| -> Series {
        names
            .iter()
            .map(|n| {
                let pts = samples
                    .iter()
                    .filter_map(|s| Some((s.elapsed_s / 60.0, s.proc_f(n, key)? * scale)))
                    .collect();
                (n.clone(), pts)
            })
            .filter(|(_, p): &(String, Vec<(f64, f64)>)| !p.is_empty())
            .collect()
    };
    let rss = series_of("rss_kib", 1.0 / 1024.0);
    let fds = series_of("fds", 1.0);
    let lat: Series = ["p50_ms", "p99_ms"]
        .iter()
        .map(|k| {
            let pts = samples
                .iter()
                .filter_map(|s| Some((s.elapsed_s / 60.0, s.api_f(k)?)))
                .collect();
            (format!("API {}", k.trim_end_matches("_ms")), pts)
        })
        .collect();
    let root = BitMapBackend::new(path, (1200, 1000)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = if text {
        root.titled(title, ("sans-serif", 22))
            .map_err(|e| e.to_string())?
    } else {
        root
    };
    let areas = root.split_evenly((3, 1));
    panel(&areas[0], "RSS (MiB) per process", &rss, text)?;
    panel(&areas[1], "open file descriptors per process", &fds, text)?;
    panel(&areas[2], "driver-side API latency (ms)", &lat, text)?;
    root.present().map_err(|e| e.to_string())?;
    Ok(text)
}
