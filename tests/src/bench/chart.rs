//! `chart.png`: horizontal bars of the per-packet costs (stage 1) and the
//! end-to-end cost per frame (stage 3), drawn with plotters.

use std::path::Path;

use anyhow::{anyhow, bail};
use plotters::prelude::*;

use super::Results;

const FONT_FILES: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
];

/// Draws the chart.
///
/// # Errors
///
/// When no font is installed (plotters draws text with a TrueType font) or
/// the PNG cannot be written.
pub fn draw(path: &Path, results: &Results) -> anyhow::Result<()> {
    let font = FONT_FILES
        .iter()
        .find_map(|f| std::fs::read(f).ok())
        .ok_or_else(|| anyhow!("no DejaVu font found (apt-get install fonts-dejavu-core)"))?;
    // plotters keeps the font for the life of the process.
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    if plotters::style::register_font("sans-serif", FontStyle::Normal, font).is_err() {
        bail!("the DejaVu font could not be parsed");
    }

    let stage1: Vec<(String, f64)> = results
        .per_packet
        .iter()
        .map(|s| (s.name.clone(), s.median))
        .collect();
    let stage3: Vec<(String, f64)> = results
        .e2e
        .iter()
        .map(|f| (f.series.name.clone(), f.series.median))
        .collect();
    let rows = stage1.len() + stage3.len();
    let height = 120 + 26 * rows as u32 + 80;
    let root = BitMapBackend::new(path, (1200, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let split = 60 + 26 * stage1.len() as u32 + 40;
    let (top, bottom) = root.split_vertically(split);
    panel(
        &top,
        "1. Per packet, BPF_PROG_TEST_RUN (ns, median)",
        &stage1,
    )?;
    panel(
        &bottom,
        "3. End to end over veth (ns per frame, median; lower is better)",
        &stage3,
    )?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    rows: &[(String, f64)],
) -> anyhow::Result<()> {
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("{e}");
    area.draw(&Text::new(
        title.to_owned(),
        (20, 15),
        ("sans-serif", 20).into_font(),
    ))
    .map_err(err)?;
    let max = rows.iter().map(|r| r.1).fold(1.0, f64::max);
    let (label_w, bar_w) = (430i32, 640.0);
    for (i, (name, value)) in rows.iter().enumerate() {
        let y = 50 + 26 * i as i32;
        let color = if name.starts_with("ours") {
            RGBColor(31, 119, 180)
        } else if name.starts_with("floor") {
            RGBColor(150, 150, 150)
        } else {
            RGBColor(214, 96, 77)
        };
        area.draw(&Text::new(
            name.clone(),
            (20, y + 4),
            ("sans-serif", 14).into_font(),
        ))
        .map_err(err)?;
        let width = (value / max * bar_w).max(1.0) as i32;
        area.draw(&Rectangle::new(
            [(label_w, y), (label_w + width, y + 20)],
            color.filled(),
        ))
        .map_err(err)?;
        area.draw(&Text::new(
            format!("{value:.0}"),
            (label_w + width + 6, y + 4),
            ("sans-serif", 14).into_font(),
        ))
        .map_err(err)?;
    }
    Ok(())
}
